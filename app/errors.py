"""The service's domain errors: what went wrong, in the service's terms. No HTTP here.

Status codes, `error_type` strings and headers are assigned once, at the edge (app/http_errors.py), for the routes
and the middleware alike; the batcher and the service raise these and never choose an HTTP detail.
"""

from __future__ import annotations


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
