"""What the HTTP translators (paraserve's API, Open Inference Protocol v2 REST) share: the service behind a request,
the API key, who the client is, and when it has left. No protocol's shapes here; those stay in each translator.

Dependencies are `async def`: FastAPI runs plain `def` ones in a thread pool, a thread hop per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Response

from app.core.service import PredictionService
from app.core.validation import Scored, client_identity, require_api_key
from app.shared.config import Settings


async def get_service(request: Request) -> PredictionService:
    """The app's service, whatever its state (the core says whether it can take a request)."""
    service: PredictionService = request.app.state.service
    return service


ServiceDep = Annotated[PredictionService, Depends(get_service)]


def api_key_guard(settings: Settings) -> Callable[[Request], Awaitable[None]]:
    """The dependency that enforces PARASERVE_API_KEY (a no-op without one), for every protocol's model routes."""
    api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None

    async def require_key(request: Request) -> None:
        require_api_key(api_key, request.headers.get("authorization", ""), "Authorization: Bearer <key>")

    return require_key


def client_of(request: Request, header: str | None) -> str:
    """Who asks, for fair admission: the trusted proxy's header when configured and sent, else the peer address."""
    return client_identity(request.headers.get(header, "") if header else "", request.client.host if request.client else "")


def disconnect_of(request: Request) -> Callable[[], Awaitable[None]]:
    """An awaitable factory that completes when the client has closed the connection (the core's `gone`)."""

    async def wait() -> None:
        # The body is already read, so the next ASGI message is http.disconnect (or nothing until we answer).
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    return wait


def timing_headers(response: Response, scored: Scored) -> None:
    """Milliseconds, as text-embeddings-inference names them, plus the standard Server-Timing."""
    queue_ms, inference_ms = scored.queue_seconds * 1000, scored.inference_seconds * 1000
    response.headers["x-queue-time"] = f"{queue_ms:.1f}"
    response.headers["x-inference-time"] = f"{inference_ms:.1f}"
    response.headers["server-timing"] = f"queue;dur={queue_ms:.1f}, inference;dur={inference_ms:.1f}"
