"""Pure ASGI middleware: request identity, request guards (size, content type), per-route metrics, the drain notice.
No BaseHTTPMiddleware."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from app.shared.metrics import HTTP_METHODS, Metrics
from app.shared.observability import Tracer, accepted_request_id, request_id
from app.transport.http_errors import send_error

REQUEST_ID_HEADER = b"x-request-id"

BODY_METHODS = {"POST", "PUT", "PATCH"}


class _BodyTooLarge(HTTPException):
    # An HTTPException, because FastAPI turns any other error raised while it reads the body into a 400.
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class RequestGuard:
    """413 for bodies over the limit (by Content-Length before reading, or while streaming) and 415 for non-JSON."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, json_routes: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.json_routes = json_routes  # (method, path) pairs whose body must be JSON; others get their 404/405

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        is_json = content_type == b"application/json" or content_type.endswith(b"+json")
        if (scope["method"], scope["path"]) in self.json_routes and not is_json:
            shown = content_type.decode("latin-1") or "none"
            await send_error(send, UnsupportedMediaType(f"content type must be application/json, not {shown}"))
            return
        declared = headers.get(b"content-length")
        limit = self.max_body_bytes
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await send_error(send, BadRequest("Content-Length is not a number"))
                return
            if size > limit:
                await send_error(send, PayloadTooLarge(f"request body of {size} bytes exceeds the limit of {limit}"))
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge as exc:
            if not started:
                await send_error(send, PayloadTooLarge(str(exc.detail)))


class MetricsMiddleware:
    """Counts requests by route template and status, times them, and counts error responses by error_type."""

    def __init__(self, app: ASGIApp, metrics: Metrics, known_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths  # for answers given before routing (413, 415), labelled by their path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        error_type: str | None = None

        async def observing_send(message: Message) -> None:
            nonlocal status, error_type
            if message["type"] == "http.response.start":
                status = message["status"]
                for key, value in message.get("headers", []):
                    if key.lower() == b"x-error-type":
                        error_type = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or (scope["path"] if scope["path"] in self.known_paths else "other")
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self.metrics.requests.labels(route=template, method=method, status=str(status)).inc()
            self.metrics.request_duration.labels(route=template).observe(time.perf_counter() - started)
            if error_type is not None:
                self.metrics.errors.labels(error_type=error_type).inc()


class DrainNotice:
    """While the service drains, every response says `Connection: close`: a client keeping the connection alive would
    otherwise send its next request just as the server closes it, and see a reset instead of an answer."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def noting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and self.draining():
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, noting_send)


class RequestIdentity:
    """Pure ASGI: gives each HTTP request its id (and server span), and puts `x-request-id` on its response."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), b"")
        rid = accepted_request_id(given.decode("latin-1"))  # latin-1: any byte decodes; only ASCII tokens are kept
        token = request_id.set(rid)
        status = 500

        async def identified_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, rid.encode())]
            await send(message)

        try:
            with self.tracer.server_span(scope, rid) as span:
                try:
                    await self.app(scope, receive, identified_send)
                finally:
                    if span is not None:
                        route = getattr(scope.get("route"), "path", None)
                        span.set_attribute("http.response.status_code", status)
                        if route:
                            span.set_attribute("http.route", route)
        finally:
            request_id.reset(token)
