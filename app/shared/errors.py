"""The service's domain errors, and the one table that says what each is on every protocol.

The core raises these and never chooses a wire detail. `KINDS` gives each its `error_type` (the label of
paraserve_errors_total, the same value whichever protocol answered), its HTTP status and its gRPC status code (by
name, so nothing here imports grpc); `kind_of` finds an error's entry (its nearest listed class). Each transport has
one renderer over this table: app/transport/http_errors.py for HTTP, app/protocols/v2_grpc.py for gRPC. A protocol
whose conventions differ (OIP v2 over REST answers 400 for every invalid request) is a `Dialect`: its statuses
where they differ and its name for the place of a bad pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


class ServiceError(Exception):
    """Base of the errors the service answers deliberately."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationFailed(ServiceError):
    """The body parsed but does not match the schema or its limits."""


class InvalidPair(ValidationFailed):
    """One sentence of one pair breaks a limit: which pair (0-based), which sentence (0 or 1), and what.

    Each protocol names the place in its own terms (`pairs.0.sentence1`, `input text_a[0]`); the problem is the same.
    """

    def __init__(self, index: int, position: int, problem: str) -> None:
        super().__init__(f"pair {index}, sentence {position + 1}: {problem}")
        self.index = index
        self.position = position
        self.problem = problem


class InvalidJSON(ServiceError):
    """The body is not JSON."""


class BadRequest(ServiceError):
    """The request itself is malformed (e.g. a non-numeric Content-Length, invalid UTF-8)."""


class InvalidInput(ServiceError):
    """An Open Inference Protocol request whose tensors do not fit the model (names, types, shapes, limits)."""


class ModelNotFound(ServiceError):
    """A model name or version this server does not serve."""


class NotFound(ServiceError):
    """No such route."""


class MethodNotAllowed(ServiceError):
    """The route exists but not for this method."""


class Unauthorized(ServiceError):
    """An API key is configured and the request did not carry it."""


class PayloadTooLarge(ServiceError):
    """The body is over the byte limit."""


class UnsupportedMediaType(ServiceError):
    """A JSON route received another content type."""


class Overloaded(ServiceError):
    """The queue cannot take this request's rows now; `retry_after_s` says when trying again makes sense."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(ServiceError):
    """The client did not send its request headers or body in time."""


class HeadersTooLarge(ServiceError):
    """The request's header block is over the size limit."""


class TooManyConnections(ServiceError):
    """Over the open-connection (or pipelined-request) limit: refused before any request is read."""


class NotReady(ServiceError):
    """Starting, or the model worker stopped."""


class ShuttingDown(ServiceError):
    """Draining after SIGTERM: accepted work finishes, new work is refused."""


class ClientClosed(ServiceError):
    """The client left before its answer was ready (nobody receives the response)."""


class InferenceFailed(ServiceError):
    """The forward of the batch holding this request raised, or the worker stopped."""


@dataclass(frozen=True)
class Kind:
    """What a domain error is on the wire: the error_type every protocol reports, the HTTP status, the gRPC code."""

    error_type: str
    http: int
    grpc: str  # a grpc.StatusCode name


KINDS: dict[type[ServiceError], Kind] = {
    InvalidJSON: Kind("invalid_json", 400, "INVALID_ARGUMENT"),
    BadRequest: Kind("bad_request", 400, "INVALID_ARGUMENT"),
    InvalidInput: Kind("invalid_input", 400, "INVALID_ARGUMENT"),
    ValidationFailed: Kind("validation", 422, "INVALID_ARGUMENT"),
    ModelNotFound: Kind("model_not_found", 404, "NOT_FOUND"),
    NotFound: Kind("not_found", 404, "NOT_FOUND"),
    MethodNotAllowed: Kind("method_not_allowed", 405, "UNIMPLEMENTED"),
    Unauthorized: Kind("unauthorized", 401, "UNAUTHENTICATED"),
    RequestTimeout: Kind("request_timeout", 408, "DEADLINE_EXCEEDED"),
    PayloadTooLarge: Kind("payload_too_large", 413, "RESOURCE_EXHAUSTED"),
    UnsupportedMediaType: Kind("unsupported_media_type", 415, "INVALID_ARGUMENT"),
    Overloaded: Kind("overloaded", 429, "RESOURCE_EXHAUSTED"),
    HeadersTooLarge: Kind("headers_too_large", 431, "RESOURCE_EXHAUSTED"),
    ClientClosed: Kind("client_closed_request", 499, "CANCELLED"),  # nginx's code; the client never sees it
    InferenceFailed: Kind("inference", 500, "INTERNAL"),
    NotReady: Kind("not_ready", 503, "UNAVAILABLE"),
    ShuttingDown: Kind("shutting_down", 503, "UNAVAILABLE"),
    TooManyConnections: Kind("too_many_connections", 503, "RESOURCE_EXHAUSTED"),
}
INTERNAL = Kind("internal", 500, "INTERNAL")  # anything else: a bug, never a client's mistake


def kind_of(exc: BaseException) -> Kind:
    """The table's entry for an error: its nearest listed class, INTERNAL for anything not a listed domain error."""
    for cls in type(exc).__mro__:
        if cls in KINDS:
            return KINDS[cls]  # type: ignore[index]
    return INTERNAL


@dataclass(frozen=True)
class Dialect:
    """How one protocol renders domain errors: its HTTP statuses where they differ from the table (by error_type),
    and its name for the place of a bad pair (`pairs.0.sentence1`, `input text_a[0]`)."""

    locate: Callable[[InvalidPair], str]
    statuses: Mapping[str, int] = field(default_factory=dict)

    def status(self, kind: Kind) -> int:
        return self.statuses.get(kind.error_type, kind.http)

    def message(self, exc: ServiceError) -> str:
        """The error's text, with a bad pair's place named in this protocol's terms."""
        if isinstance(exc, InvalidPair):
            return f"{self.locate(exc)}: {exc.problem}"
        return exc.message


PARASERVE = Dialect(lambda e: f"pairs.{e.index}.sentence{e.position + 1}")
