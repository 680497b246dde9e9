"""The application factory: a lifespan loads, warms up and starts the model worker, then drains it on shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.api import build_router
from app.config import Settings
from app.errors import install_error_handlers
from app.metrics import Metrics
from app.middleware import MetricsMiddleware, RequestGuard
from app.runtime import Runtime
from app.service import PredictionService

log = logging.getLogger(__name__)

DESCRIPTION = """\
Answers "are these two sentences paraphrases?" with a BERT fine-tuned on GLUE MRPC, traced to TorchScript and
(by default) dynamically quantized to int8. Pairs from concurrent requests share 8x128 batches on one CPU thread.

Every error has the shape `{"error": "...", "error_type": "..."}`.
"""


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None, registry: CollectorRegistry | None = None) -> FastAPI:
    """Build the app; settings come from PARASERVE_* when not given. Nothing is loaded until the lifespan runs."""
    settings = settings or Settings()
    registry = registry or CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = runtime or await asyncio.to_thread(Runtime.load, settings.artifact_dir, **runtime_options(settings))
        service = PredictionService(loaded, settings, app.state.metrics)
        await service.start(on_fatal=lambda exc: _fatal(app, exc))
        app.state.service = service
        log.info("ready: %s %s on %d thread(s)", loaded.name, loaded.variant, settings.torch_threads)
        try:
            yield
        finally:
            app.state.drained = await service.stop()
            log.info("stopped")

    app = FastAPI(title="paraserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = Metrics(registry)
    app.state.fatal = None
    app.state.drained = None
    # How a dead worker stops the server; tests replace it.
    app.state.stop_server = lambda: os.kill(os.getpid(), signal.SIGTERM)
    router = build_router(settings)
    app.include_router(router)
    install_error_handlers(app)
    known = frozenset(getattr(r, "path", "") for r in router.routes)
    json_routes = frozenset((m, r.path) for r in router.routes for m in getattr(r, "methods", ()) if m in ("POST", "PUT", "PATCH"))
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, json_routes=json_routes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, known_paths=known)
    return app


def runtime_options(settings: Settings) -> dict[str, Any]:
    """The Runtime.load arguments that come from the settings."""
    return {"threads": settings.torch_threads, "padding": settings.padding, "quantized_engine": settings.quantized_engine}


def _fatal(app: FastAPI, exc: BaseException) -> None:
    # No silent zombie: /readyz is already 503; stop the server so `python -m app` exits non-zero and a
    # supervisor (Docker, Kubernetes, systemd) restarts it.
    app.state.fatal = exc
    app.state.metrics.ready.set(0)
    log.critical("model worker died (%r); stopping the server", exc)
    app.state.stop_server()
