"""The application factory: a lifespan loads, warms up and starts the model worker, then drains it on shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.api import api_key_guard, build_router
from app.config import Settings
from app.http_errors import install_error_handlers
from app.metrics import Metrics
from app.middleware import MetricsMiddleware, RequestGuard
from app.observability import RequestIdentity, Tracer
from app.service import PredictionService
from app.v2 import build_v2_router
from artifact.runtime import Runtime

log = logging.getLogger(__name__)

DESCRIPTION = """\
Answers "are these two sentences paraphrases?" with a BERT fine-tuned on GLUE MRPC, traced to TorchScript and
quantized to int8. Pairs from concurrent requests share batches on one CPU thread.

Every error has the shape `{"error": "...", "error_type": "..."}`.
"""


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def create_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    registry: CollectorRegistry | None = None,
    stop_server: Callable[[], None] = _sigterm_self,
    tracer: Tracer | None = None,
) -> FastAPI:
    """Build the app; settings come from PARASERVE_* when not given. Nothing is loaded until the lifespan runs.

    `stop_server` is how a dead model worker ends the process (so a supervisor restarts it); tests pass their own.
    `tracer`: OpenTelemetry spans (default: from the OTEL_* variables, off when none configures an exporter).
    """
    settings = settings or Settings()
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    tracer = tracer or Tracer.from_environment()
    service = PredictionService(settings, metrics, on_fatal=lambda _exc: stop_server(), tracer=tracer)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loaded = runtime or await asyncio.to_thread(Runtime.load, settings.artifact_dir, **runtime_options(settings))
        await service.start(loaded)
        log.info("ready: %s %s on %d worker(s) x %d thread(s)", loaded.name, loaded.variant, settings.workers, settings.torch_threads)
        try:
            yield
        finally:
            await service.stop()
            log.info("stopped")

    app = FastAPI(title="paraserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    # No slash redirects: Starlette builds them from the client's Host header (POST /predict/ with
    # Host: evil.example answered 307 to http://evil.example/predict). /predict/ is a 404 like any unknown path.
    app.router.redirect_slashes = False
    app.state.registry = registry
    app.state.service = service
    router = build_router(settings)
    app.include_router(router)
    v2 = build_v2_router(settings, api_key_guard(settings), (runtime.name, runtime.sha256[:12]) if runtime else None)
    app.include_router(v2)
    install_error_handlers(app)
    known = frozenset(getattr(r, "path", "") for r in [*router.routes, *v2.routes])
    json_routes = frozenset((m, r.path) for r in router.routes for m in getattr(r, "methods", ()) if m in ("POST", "PUT", "PATCH"))
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, json_routes=json_routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, known_paths=known)
    app.add_middleware(RequestIdentity, tracer=tracer)  # outermost: every answer, errors included, carries the id
    return app


def runtime_options(settings: Settings) -> dict[str, Any]:
    """The Runtime.load arguments that come from the settings."""
    return {"threads": settings.torch_threads, "padding": settings.padding, "quantized_engine": settings.quantized_engine}
