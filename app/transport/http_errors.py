"""The HTTP renderer of the one error table (app/shared/errors.py): status, headers and `{"error", "error_type"}`.

One function, `rendering`, decides what an error looks like on HTTP (status by the table or the route's dialect,
headers, body); the routes (FastAPI's exception handlers), the pure ASGI middleware and ErrorBoundary (`send_error`)
and the guarded connection outside any request (`raw_error`) only write it out. A dialect is chosen by path prefix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.shared import errors
from app.shared.logs import ExceptionLog

log = logging.getLogger(__name__)

# Framework-raised statuses, as domain errors.
BY_STATUS: dict[int, type[errors.ServiceError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
}


@dataclass(frozen=True)
class Rendered:
    """An error as HTTP says it."""

    status: int
    error_type: str
    headers: dict[str, str]
    body: bytes


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


def rendering(exc: BaseException, dialect: errors.Dialect = errors.PARASERVE, extra_headers: Mapping[str, str] | None = None) -> Rendered:
    """The status, headers and JSON body of any error (anything not a domain error is a 500 `internal`)."""
    kind = errors.kind_of(exc)
    if isinstance(exc, errors.ServiceError):
        message, headers = dialect.message(exc), {**headers_for(exc), **(extra_headers or {})}
    else:
        message, headers = "internal error", {}
    status = dialect.status(kind)
    if status < 500:  # one line, at debug: a client's mistake is the client's to log
        log.debug("%d %s: %s", status, kind.error_type, message[:200])
    body = json.dumps({"error": message, "error_type": kind.error_type}).encode()
    return Rendered(status, kind.error_type, {**headers, "x-error-type": kind.error_type}, body)


def render(exc: BaseException, dialect: errors.Dialect = errors.PARASERVE, extra_headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A route's JSON error response."""
    r = rendering(exc, dialect, extra_headers)
    return JSONResponse(json.loads(r.body), status_code=r.status, headers=r.headers)


async def send_error(send: Send, exc: BaseException) -> None:
    """Answer from pure ASGI middleware (before routing, or around the routes) with the same rendering."""
    r = rendering(exc)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(r.body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in r.headers.items()]
    await send({"type": "http.response.start", "status": r.status, "headers": headers})
    await send({"type": "http.response.body", "body": r.body})


def raw_error(exc: errors.ServiceError) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection, for answers outside any request cycle."""
    r = rendering(exc)
    lines = [f"HTTP/1.1 {r.status} {HTTPStatus(r.status).phrase}", "content-type: application/json", f"content-length: {len(r.body)}"]
    lines += [f"{k.lower()}: {v}" for k, v in r.headers.items() if k.lower() != "connection"] + ["connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + r.body


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


def install_error_handlers(app: FastAPI, dialects: Mapping[str, errors.Dialect] = {}) -> None:
    """Route every exception kind through the table, in the dialect of the route's protocol (by path prefix).

    No handler for `Exception`: an unexpected one reaches `ErrorBoundary`, which answers 500 in the error shape
    and logs it once (Starlette's own handler would also re-raise it to the server, a second traceback).
    """
    by_prefix = sorted(dialects.items(), key=lambda item: len(item[0]), reverse=True)

    def dialect_of(request: Request) -> errors.Dialect:
        path = request.url.path
        return next((d for prefix, d in by_prefix if path == prefix or path.startswith(prefix + "/")), errors.PARASERVE)

    @app.exception_handler(errors.ServiceError)
    async def _service_error(request: Request, exc: errors.ServiceError) -> JSONResponse:
        return render(exc, dialect_of(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return render(_validation_error(exc), dialect_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = BY_STATUS.get(exc.status_code)
        if cls is None:
            body = {"error": str(exc.detail), "error_type": "http_error"}
            return JSONResponse(body, status_code=exc.status_code, headers={"x-error-type": "http_error"})
        message = "request body could not be parsed (invalid UTF-8 or JSON)" if exc.status_code == 400 else str(exc.detail)
        return render(cls(message), extra_headers=dict(exc.headers or {}))  # e.g. 405's Allow


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
                await send_error(send, exc)
