"""The application factory: a lifespan loads (app.start), warms up and starts the model workers, then drains them.

`create_app` is also the ASGI factory (`uvicorn --factory app.main:create_app`) and each Ray Serve replica's app.
"""

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

from app import v2
from app.api import build_router
from app.config import Settings
from app.edge import api_key_guard
from app.http_errors import ErrorBoundary, install_error_handlers
from app.logs import configure_logging
from app.metrics import Metrics
from app.middleware import DrainNotice, MetricsMiddleware, RequestGuard, RequestIdentity
from app.observability import Tracer
from app.service import PredictionService, State
from app.start import open_runtime
from artifact.runtime import Runtime

log = logging.getLogger(__name__)

DESCRIPTION = """\
Answers "are these two sentences paraphrases?" with a BERT fine-tuned on GLUE MRPC, traced to TorchScript and
quantized to int8. Pairs from concurrent requests share batches on single-threaded model workers.

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
        if not logging.getLogger().handlers:  # uvicorn --factory, a Ray replica: the same log lines as python -m app
            configure_logging(settings.log_level, settings.json_logs)
        loaded = runtime or await asyncio.to_thread(open_runtime, settings)
        await service.start(loaded)
        grpc_server = await _start_grpc(service, settings) if settings.grpc_port else None
        log.info("ready: %s %s on %d worker(s) x %d thread(s)", loaded.name, loaded.variant, settings.workers, settings.torch_threads)
        try:
            yield
        finally:
            service.begin_shutdown()  # gRPC's health says NOT_SERVING and new calls get UNAVAILABLE from here on
            if grpc_server is not None:
                await grpc_server.stop(settings.shutdown_grace_s)  # calls under way finish on the still-running batcher
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
    v2_router = v2.build_v2_router(api_key_guard(settings))
    app.include_router(v2_router)
    install_error_handlers(app, [v2.DIALECT])
    if runtime is not None:  # the served model's name and version in the OpenAPI document, for clients and fuzzers
        app.openapi = _pinned_openapi(app, runtime)  # type: ignore[method-assign]
    known = frozenset(getattr(r, "path", "") for r in [*router.routes, *v2_router.routes])
    json_routes = frozenset((m, r.path) for r in router.routes for m in getattr(r, "methods", ()) if m in ("POST", "PUT", "PATCH"))
    app.add_middleware(ErrorBoundary)
    app.add_middleware(DrainNotice, draining=lambda: service.state in (State.DRAINING, State.STOPPED))
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, json_routes=json_routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, known_paths=known)
    app.add_middleware(RequestIdentity, tracer=tracer)  # outermost: every answer, errors included, carries the id
    return app


async def _start_grpc(service: PredictionService, settings: Settings) -> Any:
    """The Open Inference Protocol over gRPC beside HTTP; grpc is imported only when a port asks for it."""
    from app.grpc_v2 import start_grpc_server

    server, health = await start_grpc_server(service, settings)
    loop = asyncio.get_running_loop()
    service.on_state_change(lambda state: loop.create_task(health.update(state)))
    return server


def _pinned_openapi(app: FastAPI, runtime: Runtime) -> Callable[[], dict[str, Any]]:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = v2.pin_model(generate(), runtime.name, runtime.sha256[:12])
        return app.openapi_schema

    return openapi
