"""The HTTP edge of the error hierarchy: one table from domain error to status and `error_type`, one renderer.

Routes (through FastAPI's exception handlers) and the pure ASGI middleware (through `send_error`) both answer with
`{"error": ..., "error_type": ...}` from this table; nothing else in the service names a status code. A protocol
with other conventions (Open Inference Protocol v2: 400 for every invalid request, tensors instead of pairs) is a
`Dialect`: its own statuses where they differ and its own name for the place of a bad pair, chosen by path prefix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import errors
from app.logs import ExceptionLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpKind:
    status: int
    error_type: str


KINDS: dict[type[errors.ServiceError], HttpKind] = {
    errors.InvalidJSON: HttpKind(400, "invalid_json"),
    errors.BadRequest: HttpKind(400, "bad_request"),
    errors.InvalidInput: HttpKind(400, "invalid_input"),
    errors.ModelNotFound: HttpKind(404, "model_not_found"),
    errors.Unauthorized: HttpKind(401, "unauthorized"),
    errors.NotFound: HttpKind(404, "not_found"),
    errors.MethodNotAllowed: HttpKind(405, "method_not_allowed"),
    errors.RequestTimeout: HttpKind(408, "request_timeout"),
    errors.PayloadTooLarge: HttpKind(413, "payload_too_large"),
    errors.UnsupportedMediaType: HttpKind(415, "unsupported_media_type"),
    errors.ValidationFailed: HttpKind(422, "validation"),
    errors.Overloaded: HttpKind(429, "overloaded"),
    errors.HeadersTooLarge: HttpKind(431, "headers_too_large"),
    errors.ClientClosed: HttpKind(499, "client_closed_request"),  # nginx's code; the client never sees it
    errors.InferenceFailed: HttpKind(500, "inference"),
    errors.NotReady: HttpKind(503, "not_ready"),
    errors.ShuttingDown: HttpKind(503, "shutting_down"),
    errors.TooManyConnections: HttpKind(503, "too_many_connections"),
}
INTERNAL = HttpKind(500, "internal")
# Framework-raised statuses, as domain errors.
BY_STATUS: dict[int, type[errors.ServiceError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
}


@dataclass(frozen=True)
class Dialect:
    """How one HTTP protocol renders the core's domain errors: the statuses where it differs from paraserve's own
    table, and its name for the place of a bad pair (`pairs.0.sentence1`, `input text_a[0]`)."""

    prefix: str
    locate: Callable[[errors.InvalidPair], str]
    overrides: Mapping[type[errors.ServiceError], HttpKind] = field(default_factory=dict)

    def kind(self, exc: errors.ServiceError) -> HttpKind:
        """The status and error_type of a domain error (its nearest listed class)."""
        for cls in type(exc).__mro__:
            if cls in self.overrides:
                return self.overrides[cls]  # type: ignore[index]
            if cls in KINDS:
                return KINDS[cls]  # type: ignore[index]
        return INTERNAL

    def message(self, exc: errors.ServiceError) -> str:
        """The error's text, with a bad pair's place named in this protocol's terms."""
        if isinstance(exc, errors.InvalidPair):
            return f"{self.locate(exc)}: {exc.problem}"
        return exc.message


PARASERVE = Dialect("", lambda e: f"pairs.{e.index}.sentence{e.position + 1}")


def kind_of(exc: errors.ServiceError) -> HttpKind:
    """The status and error_type of a domain error in paraserve's own API (and before routing)."""
    return PARASERVE.kind(exc)


def headers_for(exc: errors.ServiceError) -> dict[str, str]:
    """HTTP headers a domain error implies: when to retry, how to authenticate, that the connection ends."""
    if isinstance(exc, errors.PayloadTooLarge):
        return {"Connection": "close"}  # the rest of the body is never read: the connection cannot carry another request
    if isinstance(exc, errors.Overloaded):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    if isinstance(exc, errors.TooManyConnections):
        return {"Retry-After": "1"}
    if isinstance(exc, errors.Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    return {}


def error_body(message: str, error_type: str) -> dict[str, str]:
    """The one error shape."""
    return {"error": message, "error_type": error_type}


def render(exc: errors.ServiceError, extra_headers: dict[str, str] | None = None, dialect: Dialect = PARASERVE) -> JSONResponse:
    """A JSON error response; x-error-type lets the metrics middleware count it by kind."""
    kind = dialect.kind(exc)
    headers = {**headers_for(exc), **(extra_headers or {}), "x-error-type": kind.error_type}
    if kind.status < 500:  # one line, at debug: a client's mistake is the client's to log
        log.debug("%d %s: %s", kind.status, kind.error_type, dialect.message(exc)[:200])
    return JSONResponse(error_body(dialect.message(exc), kind.error_type), status_code=kind.status, headers=headers)


async def send_error(send: Send, exc: errors.ServiceError) -> None:
    """Answer from pure ASGI middleware (before routing) in the same shape, status and headers as `render`."""
    kind = kind_of(exc)
    body = json.dumps(error_body(exc.message, kind.error_type)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-error-type", kind.error_type.encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in headers_for(exc).items()]
    await send({"type": "http.response.start", "status": kind.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _validation_error(exc: RequestValidationError) -> errors.ServiceError:
    problems: list[dict[str, Any]] = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in problems):
        detail = problems[0].get("ctx", {}).get("error", "malformed JSON")
        return errors.InvalidJSON(f"request body is not valid JSON: {detail}")
    parts = []
    for e in problems[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return errors.ValidationFailed("; ".join(parts) + more)


def install_error_handlers(app: FastAPI, dialects: Sequence[Dialect] = ()) -> None:
    """Route every exception kind through the table, in the dialect of the route's protocol (by path prefix).

    No handler for `Exception`: an unexpected one reaches `ErrorBoundary`, which answers 500 in the error shape
    and logs it once (Starlette's own handler would also re-raise it to the server, a second traceback).
    """
    by_prefix = sorted(dialects, key=lambda d: len(d.prefix), reverse=True)

    def dialect_of(request: Request) -> Dialect:
        path = request.url.path
        return next((d for d in by_prefix if path == d.prefix or path.startswith(d.prefix + "/")), PARASERVE)

    @app.exception_handler(errors.ServiceError)
    async def _service_error(request: Request, exc: errors.ServiceError) -> JSONResponse:
        return render(exc, dialect=dialect_of(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return render(_validation_error(exc), dialect=dialect_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = BY_STATUS.get(exc.status_code)
        if cls is None:
            kind = HttpKind(exc.status_code, "http_error")
            return JSONResponse(
                error_body(str(exc.detail), kind.error_type), status_code=kind.status, headers={"x-error-type": kind.error_type}
            )
        message = "request body could not be parsed (invalid UTF-8 or JSON)" if exc.status_code == 400 else str(exc.detail)
        return render(cls(message), dict(exc.headers or {}))  # e.g. 405's Allow


class ErrorBoundary:
    """Pure ASGI, around the routes: an exception nothing else handled becomes a 500 in the error shape, logged with
    its traceback at most once a minute per kind; a request cancelled by the server's shutdown timeout becomes a 503
    `shutting_down`. Nothing propagates to the server, which would log a second traceback and answer text/plain."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._log = ExceptionLog(log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not started:
                await send_error(send, errors.ShuttingDown("the service stopped before this request could finish"))
        except Exception as exc:
            self._log(f"unhandled error in {scope['method']} {scope['path'][:100]}", exc)
            if not started:
                body = json.dumps(error_body("internal error", INTERNAL.error_type)).encode()
                headers = [(b"content-type", b"application/json"), (b"x-error-type", INTERNAL.error_type.encode())]
                await send({"type": "http.response.start", "status": 500, "headers": headers})
                await send({"type": "http.response.body", "body": body})
