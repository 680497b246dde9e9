"""The HTTP server in front: uvicorn with paraserve's guarded h11 connections (app/transport/http11.py), a drain that
answers what it accepted, every stop signal handled the same way, and the listening socket bound before the model loads.

Every stop signal (SIGTERM, SIGINT, SIGHUP) drains: the listeners close at once, accepted requests are answered, the
process exits 0. A second signal during the drain changes nothing but one log line: the drain goes on, bounded by
PARASERVE_SHUTDOWN_GRACE_S (uvicorn's own second SIGINT would cancel accepted requests; a signal arriving after
uvicorn restored the default handlers would kill the process, -15, with a gRPC call in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from app.transport.http11 import Drain, guarded_protocol

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a busy port fails in a second, not after warm-up."""
    from artifact.errors import UserError

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


@dataclass(frozen=True)
class ServerOptions:
    keep_alive_s: float
    shutdown_grace_s: float


class DrainingServer(uvicorn.Server):
    """uvicorn with a drain that answers what it accepted. The moment a stop signal arrives (on the event loop's next
    turn, before any answer can tell a client to reconnect), connections waiting in the listen backlog are accepted
    (each then answered 503 if it sends a request) and the listener closes: a later connection is refused, never
    reset with its request. Only then does `on_drain` run (the service turns not ready, answers say Connection: close,
    the gRPC port stops listening).

    Closing the listener only at uvicorn's shutdown (up to 0.1 s after the signal) left a window in which clients
    told to reconnect kept connecting, and one whose handshake the kernel completed between the last accept and the
    close got a reset after sending its request (once in a CI run of the hostile-client tests).
    """

    def __init__(self, config: uvicorn.Config, listeners: list[socket.socket], on_drain: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._listeners = listeners
        self._on_drain = on_drain or (lambda: None)
        protocol = config.http if isinstance(config.http, type) else None
        self.drain: Drain = getattr(protocol, "drain", Drain())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlog: list[socket.socket] = []
        self._adopting: asyncio.Task[None] | None = None
        self._signals = 0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Every stop signal calls handle_exit, from start until the process ends: the handlers are never put back to
        the defaults (a signal in the last moments of the process would otherwise kill it), and none is re-raised."""
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread's handlers
            for sig in STOP_SIGNALS:
                signal.signal(sig, self.handle_exit)
        yield

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            grace = self.config.timeout_graceful_shutdown
            log.warning("%s during the drain: the drain goes on (at most %s s)", signal.Signals(sig).name, grace)
            return
        self.should_exit = True  # uvicorn's own handle_exit would set force_exit on a second SIGINT
        if self.started and self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin_drain)  # a signal handler must not touch the loop's sockets itself
        else:  # still starting: nothing is served yet, and shutdown() stops listening
            self._on_drain()

    def _begin_drain(self) -> None:
        self.stop_listening()
        self._on_drain()

    def stop_listening(self) -> None:
        """Accept what the kernel has queued and close every listener in one synchronous step (once): a connection
        queued after the last accept and before the close would be reset with its request."""
        if self.drain.active:
            return
        self.drain.started_at = time.monotonic()
        self._backlog = self._accept_backlog()
        for server in self.servers:
            server.close()
        for listener in self._listeners:
            listener.close()  # the event loop may listen on a duplicate of it: both must close now, not after an await
        self._adopting = asyncio.get_running_loop().create_task(self._adopt(self._backlog))

    async def _adopt(self, connections: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        factory = functools.partial(
            self.config.http_protocol_class, config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        for conn in connections:
            await loop.connect_accepted_socket(factory, conn)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.stop_listening()
        if self._adopting is not None:
            await self._adopting
        self._on_drain()
        await super().shutdown(sockets)
        log.info(
            "drain: %d connection(s) taken from the backlog, %d request(s) answered 503 shutting_down, "
            "%d accepted request(s) left unanswered",
            len(self._backlog),
            self.drain.refused,
            self.drain.unanswered,
        )

    def _accept_backlog(self) -> list[socket.socket]:
        """Every connection the kernel completed but uvicorn has not accepted yet (closing the listener would reset them)."""
        accepted: list[socket.socket] = []
        for listener in self._listeners:
            listener.setblocking(False)
            while len(accepted) < 10_000:  # bounded: the backlog holds at most its configured length
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError, OSError):
                    break
                conn.setblocking(False)
                accepted.append(conn)
        return accepted


def serve(app: Any, sock: socket.socket, protocol: type, options: ServerOptions, on_drain: Callable[[], None]) -> DrainingServer:
    """Run `app` on the bound socket with the guarded protocol until a stop signal has drained it; return the server."""
    config = uvicorn.Config(
        app,
        http=protocol,
        log_config=None,
        access_log=False,
        timeout_keep_alive=options.keep_alive_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(options.shutdown_grace_s) or None,
        lifespan="on",
    )
    server = DrainingServer(config, [sock], on_drain)
    server.run(sockets=[sock])
    return server


__all__ = ["DrainingServer", "ServerOptions", "bind", "guarded_protocol", "serve"]
