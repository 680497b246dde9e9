"""`python -m app`: bind, load the artifact (app.start, as every launcher does), serve it with uvicorn and the connection
guards of app.protocol; exit non-zero on a fatal error."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import resource
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn
from pydantic import ValidationError

from app.config import Settings
from app.logs import configure_logging
from app.main import create_app
from app.protocol import ConnectionLimits, DrainingServer, guarded_protocol
from app.service import PredictionService, State
from app.start import open_runtime
from artifact.errors import UserError

log = logging.getLogger("app")


class SignalledServer(DrainingServer):
    """/readyz turns 503 as soon as a stop signal arrives (right after the listener closes), while accepted requests
    still finish.

    SIGTERM, SIGINT and SIGHUP (a closed terminal, a supervisor's reload) all drain; none kills accepted requests.
    """

    def __init__(self, config: uvicorn.Config, listeners: list[socket.socket], service: PredictionService) -> None:
        super().__init__(config, listeners, on_drain=service.begin_shutdown)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(signal.SIGTERM if sig == signal.SIGHUP else sig, frame)
        # uvicorn re-raises captured signals after shutting down, which would end the process "killed by SIGTERM"
        # (or -2 for SIGINT); a completed graceful drain is a clean exit (0), so none is re-raised. A private field
        # of uvicorn's: the pinned range is checked by tests/api/test_uvicorn_contract.py.
        self._captured_signals = []

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = signal.signal(signal.SIGHUP, self.handle_exit)
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(signal.SIGHUP, previous)


def _settings_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    name = "PARASERVE_" + "_".join(str(p) for p in first.get("loc", ())).upper()
    return f"invalid setting {name}={first.get('input')!r}: {first.get('msg')}"


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a busy port fails in a second, not after warm-up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def raise_fd_limit(connections: int) -> None:
    """Room for max_connections sockets plus the process's own files, within the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < wanted:
            log.warning("open-file limit %d is below max_connections %d + 256: lower PARASERVE_MAX_CONNECTIONS", new, connections)


def _exposed(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def main() -> int:
    """Bind, load, serve, and return the process exit code."""
    try:
        settings = Settings()
    except ValidationError as exc:
        configure_logging("info", json_logs=False)
        log.critical("cannot start: %s", _settings_problem(exc))
        return 2
    configure_logging(settings.log_level, settings.json_logs)
    if settings.api_key is None and _exposed(settings.host):
        log.warning("listening on %s without PARASERVE_API_KEY (unset or empty): anyone who reaches it may call /predict", settings.host)
    try:
        # Before uvicorn starts, so a bad artifact or a busy port is one clear line and exit 2; the port is bound
        # before the model is loaded and warmed up, so a busy one fails in a second.
        sock = bind(settings.host, settings.port)
        if settings.grpc_port is not None:  # the gRPC server binds its own port later: a busy one fails now, in one line
            bind(settings.host, settings.grpc_port).close()
        raise_fd_limit(settings.max_connections)
        runtime = open_runtime(settings)
    except UserError as exc:
        log.critical("cannot start: %s", exc)
        return 2
    app = create_app(settings, runtime=runtime)
    service: PredictionService = app.state.service
    limits = ConnectionLimits(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(ConnectionLimits)})
    config = uvicorn.Config(
        app,
        http=guarded_protocol(limits, service.metrics),
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        lifespan="on",
    )
    server = SignalledServer(config, [sock], service)
    server.run(sockets=[sock])
    if service.state is State.DEAD or service.drained is False:
        return 1  # the worker died, or accepted work was still queued when the grace period ended
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
