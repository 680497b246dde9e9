"""One exception hierarchy and one renderer: every error leaves as {"error", "error_type"} with its status code."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of the errors the service answers deliberately."""

    status_code = 500
    error_type = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class ValidationFailed(ServiceError):
    status_code, error_type = 422, "validation"


class InvalidJSON(ServiceError):
    status_code, error_type = 400, "invalid_json"


class BadRequest(ServiceError):
    status_code, error_type = 400, "bad_request"


class Unauthorized(ServiceError):
    status_code, error_type = 401, "unauthorized"


class PayloadTooLarge(ServiceError):
    status_code, error_type = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status_code, error_type = 415, "unsupported_media_type"


class Overloaded(ServiceError):
    status_code, error_type = 429, "overloaded"


class NotReady(ServiceError):
    status_code, error_type = 503, "not_ready"


class ShuttingDown(ServiceError):
    status_code, error_type = 503, "shutting_down"


class ClientClosed(ServiceError):
    status_code, error_type = 499, "client_closed_request"  # nginx's code; the client never sees it


class InferenceFailed(ServiceError):
    status_code, error_type = 500, "inference"


HTTP_ERROR_TYPES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def error_body(message: str, error_type: str) -> dict[str, str]:
    """The error shape as a dict (for pure ASGI middleware that cannot raise into FastAPI)."""
    return {"error": message, "error_type": error_type}


def render(status_code: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error response in the one shape; also records the error_type for the metrics middleware."""
    response = JSONResponse(error_body(message, error_type), status_code=status_code, headers=headers)
    response.headers["x-error-type"] = error_type
    return response


def _validation_message(exc: RequestValidationError) -> tuple[str, str]:
    errors: list[dict[str, Any]] = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = errors[0].get("ctx", {}).get("error", "malformed JSON")
        return f"request body is not valid JSON: {detail}", InvalidJSON.error_type
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more, ValidationFailed.error_type


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception kind to `render`; nothing a client sends can become a 500."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return render(exc.status_code, exc.message, exc.error_type, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, error_type = _validation_message(exc)
        return render(400 if error_type == InvalidJSON.error_type else 422, message, error_type)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
        message = "request body could not be parsed (invalid UTF-8 or JSON)" if exc.status_code == 400 else str(exc.detail)
        return render(exc.status_code, message, error_type, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return render(500, "internal error", "internal")
