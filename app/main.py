"""The composition root: `create_app` (also the ASGI factory, `uvicorn --factory app.main:create_app`, and each Ray
Serve replica's app) wires the core, the protocols and the transport together; `main` is `python -m app`.

Every launcher gets the same start (app/core/start.py: process settings, the artifact this host runs, warm-up), the
same one-line refusal of a bad setting, the same open-file budget and the same model-pinned OpenAPI document, all in
the lifespan. What only `python -m app` adds is the server in front (app/transport: the guarded h11 connections,
the drain, the port bound before the model loads, the warning for an exposed port without an API key); under
`uvicorn --factory` or a Ray Serve proxy the HTTP server, its bind and its limits are theirs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from app.core.service import PredictionService, State
from app.core.start import Repository, open_models
from app.protocols import v2_rest
from app.protocols.http_common import api_key_guard
from app.protocols.paraserve import build_router
from app.protocols.paraserve_schemas import pin_limits
from app.shared.config import Settings
from app.shared.logs import configure_logging
from app.shared.metrics import Metrics
from app.shared.observability import Tracer
from app.transport.budget import fd_budget
from app.transport.http11 import ConnectionLimits, guarded_protocol
from app.transport.http_errors import ErrorBoundary, install_error_handlers
from app.transport.middleware import DrainNotice, MetricsMiddleware, RequestGuard, RequestIdentity
from app.transport.server import ServerOptions, bind, serve
from artifact.errors import UserError
from artifact.runtime import Runtime

log = logging.getLogger("app")

DESCRIPTION = """\
Answers "are these two sentences paraphrases?" with a BERT-family model fine-tuned on GLUE MRPC and quantized to
int8. Pairs from concurrent requests share batches on single-threaded model workers.

Every error has the shape `{"error": "...", "error_type": "..."}`.
"""


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def read_settings() -> Settings:
    """PARASERVE_* as Settings, or SystemExit with one line naming the bad setting (no traceback, from any launcher)."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "PARASERVE_" + "_".join(str(p) for p in first.get("loc", ())).upper()
        raise SystemExit(f"cannot start: invalid setting {name}={first.get('input')!r}: {first.get('msg')}") from None


def create_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    repository: Repository | None = None,
    registry: CollectorRegistry | None = None,
    stop_server: Callable[[], None] = _sigterm_self,
    tracer: Tracer | None = None,
) -> FastAPI:
    """Build the app; settings come from PARASERVE_* when not given. Nothing is loaded until the lifespan runs.

    `runtime` (one model) or `repository` (several) are served instead of what the settings name (tests, python -m app).
    `stop_server` is how a dead model worker ends the process (so a supervisor restarts it); tests pass their own.
    `tracer`: OpenTelemetry spans (default: from the OTEL_* variables, off when none configures an exporter).
    """
    settings = settings or read_settings()
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    tracer = tracer or Tracer.from_environment()
    service = PredictionService(settings, metrics, on_fatal=lambda _exc: stop_server(), tracer=tracer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not logging.getLogger().handlers:  # uvicorn --factory, a Ray replica: the same log lines as python -m app
            configure_logging(settings.log_level, settings.json_logs)
        fd_budget(settings.max_connections, settings.grpc_max_connections if settings.grpc_port else 0)
        loaded = repository or (Repository({runtime.name: runtime}, {}) if runtime else await asyncio.to_thread(open_models, settings))
        await service.start(loaded.runtimes, loaded.cascades)
        names = list(service.models)
        schema = v2_rest.pin_models(app.openapi(), {n: m.id.version for n, m in service.models.items()})
        app.openapi_schema = pin_limits(schema, settings.max_pairs_per_request, settings.max_sentence_chars, names)
        grpc_edge = await _start_grpc(service, settings) if settings.grpc_port else None
        described = ", ".join(f"{n} ({m.id.variant})" for n, m in service.models.items())
        log.info("ready: %s on %d shared worker(s) x %d thread(s)", described, settings.workers, settings.torch_threads)
        try:
            yield
        finally:
            service.begin_shutdown()  # gRPC stops listening and says NOT_SERVING; new calls get UNAVAILABLE from here on
            if grpc_edge is not None:
                await grpc_edge.stop(settings.shutdown_grace_s)  # calls under way finish on the still-running batcher
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
    v2_router = v2_rest.build_v2_router(api_key_guard(settings))
    app.include_router(v2_router)
    install_error_handlers(app, {v2_rest.PREFIX: v2_rest.DIALECT})
    known = frozenset(getattr(r, "path", "") for r in [*router.routes, *v2_router.routes])
    json_routes = frozenset((m, r.path) for r in router.routes for m in getattr(r, "methods", ()) if m in ("POST", "PUT", "PATCH"))
    app.add_middleware(ErrorBoundary)
    app.add_middleware(DrainNotice, draining=lambda: service.state in (State.DRAINING, State.STOPPED))
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, json_routes=json_routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, known_paths=known)
    app.add_middleware(RequestIdentity, tracer=tracer)  # outermost: every answer, errors included, carries the id
    return app


@dataclasses.dataclass(frozen=True)
class GrpcEdge:
    """The gRPC port: the guarded front (app/transport/grpc_front.py) and gRPC's server behind it."""

    front: Any
    server: Any

    async def stop(self, grace: float) -> None:
        self.front.stop_listening()
        await self.server.stop(grace)  # calls under way finish on the still-running batcher
        await self.front.close()


async def _start_grpc(service: PredictionService, settings: Settings) -> GrpcEdge:
    """The Open Inference Protocol over gRPC beside HTTP, behind its own guarded front; grpc is imported only when a
    port asks for it. The front stops listening the moment the service drains, as HTTP's listener does."""
    from app.protocols.v2_grpc import start_grpc_server
    from app.transport.grpc_front import FrontLimits, GrpcFront

    assert settings.grpc_port is not None
    limits = FrontLimits(
        settings.grpc_max_connections, settings.grpc_max_connections_per_client, settings.header_timeout_s, settings.max_header_bytes
    )
    front = GrpcFront(limits, service.metrics)
    server, v2, upstream_port = await start_grpc_server(service, settings, front.peer_of)
    await front.listen(settings.host, settings.grpc_port, upstream_port)

    def follow(state: State) -> None:
        v2.health.update(state)
        if state in (State.DRAINING, State.STOPPED):
            front.stop_listening()

    service.on_state_change(follow)
    log.info("gRPC (Open Inference Protocol v2) on %s:%d", settings.host, settings.grpc_port)
    return GrpcEdge(front, server)


def _exposed(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def main() -> int:
    """`python -m app`: bind, load, serve with the guarded server; return the process exit code."""
    try:
        settings = read_settings()
    except SystemExit as exc:
        configure_logging("info", json_logs=False)
        log.critical("%s", exc)
        return 2
    configure_logging(settings.log_level, settings.json_logs)
    if settings.api_key is None and _exposed(settings.host):
        log.warning("listening on %s without PARASERVE_API_KEY (unset or empty): anyone who reaches it may call /predict", settings.host)
    try:
        # Before uvicorn starts, so a bad artifact or a busy port is one clear line and exit 2; the port is bound
        # before the model is loaded and warmed up, so a busy one fails in a second.
        sock = bind(settings.host, settings.port)
        if settings.grpc_port is not None:  # the gRPC front binds its own port later: a busy one fails now, in one line
            bind(settings.host, settings.grpc_port).close()
        fd_budget(settings.max_connections, settings.grpc_max_connections if settings.grpc_port else 0)
        repository = open_models(settings)
    except UserError as exc:
        log.critical("cannot start: %s", exc)
        return 2
    app = create_app(settings, repository=repository)
    service: PredictionService = app.state.service
    limits = ConnectionLimits(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(ConnectionLimits)})
    options = ServerOptions(keep_alive_s=settings.keep_alive_s, shutdown_grace_s=settings.shutdown_grace_s)
    server = serve(app, sock, guarded_protocol(limits, service.metrics), options, on_drain=service.begin_shutdown)
    if service.state is State.DEAD or service.drained is False:
        return 1  # the worker died, or accepted work was still queued when the grace period ended
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
