"""The HTTP edge of the error hierarchy: one table from domain error to status and `error_type`, one renderer.

Routes (through FastAPI's exception handlers) and the pure ASGI middleware (through `send_error`) both answer with
`{"error": ..., "error_type": ...}` from this table; nothing else in the service names a status code.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from app import errors

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
NO_TOKENS = "has no character the tokenizer keeps (only whitespace, control, zero-width or combining characters)"
# Framework-raised statuses, as domain errors.
BY_STATUS: dict[int, type[errors.ServiceError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
}


def kind_of(exc: errors.ServiceError) -> HttpKind:
    """The status and error_type of a domain error (its nearest listed class)."""
    for cls in type(exc).__mro__:
        if cls in KINDS:
            return KINDS[cls]  # type: ignore[index]
    return INTERNAL


def headers_for(exc: errors.ServiceError) -> dict[str, str]:
    """HTTP headers a domain error implies: when to retry, how to authenticate."""
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


def render(exc: errors.ServiceError, extra_headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error response; x-error-type lets the metrics middleware count it by kind."""
    kind = kind_of(exc)
    headers = {**headers_for(exc), **(extra_headers or {}), "x-error-type": kind.error_type}
    return JSONResponse(error_body(exc.message, kind.error_type), status_code=kind.status, headers=headers)


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
        # The pattern is a 2,400-character class of the code points the tokenizer drops: say what it means instead.
        message = NO_TOKENS if e.get("type") == "string_pattern_mismatch" else e.get("msg", "invalid")
        parts.append(f"{where}: {message}")
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return errors.ValidationFailed("; ".join(parts) + more)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception kind through the table; nothing a client sends can become a 500."""

    @app.exception_handler(errors.ServiceError)
    async def _service_error(_: Request, exc: errors.ServiceError) -> JSONResponse:
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return render(_validation_error(exc))

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

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body("internal error", INTERNAL.error_type), status_code=500, headers={"x-error-type": INTERNAL.error_type}
        )
