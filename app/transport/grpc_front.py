"""The gRPC port's edge: a TCP listener in the service's event loop that bounds what a connection may cost before
gRPC's own server sees a byte, and relays the rest, unchanged, to that server on a loopback port of its own.

Why a front at all: grpcio's server takes most of the limits a second listener needs as channel arguments (streams per
connection, message and metadata sizes, pings, idle connections), but it has no connections per peer address, no
share of a nearly full budget, no deadline for a connection that never says anything, and it reads a header block
(HEADERS + CONTINUATION frames) for as long as it comes (about 800 MB in 15 s over 2 connections). Measured without
it: 1,400 idle gRPC connections took every descriptor of the process and HTTP failed; with 2,000 and a higher limit
none was closed in 30 s. Here, with the same words as HTTP's edge (app/transport/http11.py):

- connections: `grpc_max_connections` in total and `grpc_max_connections_per_client` from one address, with the fair
  share near the top (app/transport/budget.py): a refused connection gets HTTP/2's SETTINGS and GOAWAY
  (ENHANCE_YOUR_CALM, the reason as debug data), lingers at most LINGER_S and is closed;
- the client's connection preface must arrive within `header_timeout_s` (else closed: header_timeout); anything
  that is not HTTP/2 is closed at once (bad_request);
- a header block over `max_header_bytes` closes the connection (headers_too_large): the frames are scanned as they
  pass (9-byte frame headers, nothing decoded), so a CONTINUATION flood costs 16 KiB, not a gigabyte;
- every refusal and close is counted in paraserve_grpc_refused_total{reason}; open connections in
  paraserve_grpc_connections_open.

gRPC's server sees the front's loopback connections, so `peer_of` gives the handlers each connection's real client
(for fair admission and per-client RPC caps). The relay copies bytes in the event loop, with backpressure both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass

from app.shared.metrics import Metrics
from app.transport.budget import ConnectionBudget

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, CONTINUATION, END_HEADERS = 0x1, 0x9, 0x4
ENHANCE_YOUR_CALM = 0xB
LINGER_S = 2.0


@dataclass(frozen=True)
class FrontLimits:
    max_connections: int
    max_connections_per_client: int
    header_timeout_s: float
    max_header_bytes: int


def goaway(reason: str) -> bytes:
    """The server's connection preface (an empty SETTINGS frame) and a GOAWAY naming the reason, as raw frames."""
    debug = reason.encode()[:200]
    settings = struct.pack(">I", 0)[1:] + bytes([0x4, 0]) + struct.pack(">I", 0)
    payload = struct.pack(">II", 0, ENHANCE_YOUR_CALM) + debug
    return settings + struct.pack(">I", len(payload))[1:] + bytes([0x7, 0]) + struct.pack(">I", 0) + payload


class FrameScanner:
    """Follows the client's HTTP/2 frames by their 9-byte headers across reads: checks the preface and the size of
    each header block. `feed` returns None, or the reason to close."""

    def __init__(self, max_header_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.preface_seen = False
        self._pending = b""  # an incomplete preface or frame header
        self._skip = 0  # payload bytes of the current frame still to pass
        self._block = -1  # bytes of the open header block; -1: none open

    def feed(self, data: bytes) -> str | None:
        view = self._pending + data if self._pending else data
        self._pending = b""
        i = 0
        if not self.preface_seen:
            need = len(PREFACE)
            if not PREFACE.startswith(view[:need]):
                return "bad_request"
            if len(view) < need:
                self._pending = view
                return None
            self.preface_seen, i = True, need
        while i < len(view):
            if self._skip:
                step = min(self._skip, len(view) - i)
                self._skip -= step
                i += step
                continue
            if len(view) - i < 9:
                self._pending = view[i:]
                return None
            length = int.from_bytes(view[i : i + 3], "big")
            kind, flags = view[i + 3], view[i + 4]
            i += 9
            self._skip = length
            if kind == HEADERS or (kind == CONTINUATION and self._block >= 0):
                self._block = max(self._block, 0) + length
                if self._block > self.max_header_bytes:
                    return "headers_too_large"
                if flags & END_HEADERS:
                    self._block = -1
        return None


class _Upstream(asyncio.Protocol):
    """The relay's side towards gRPC's own listener."""

    def __init__(self, client: _ClientConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.send(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream_closed()

    def pause_writing(self) -> None:
        self.client.pause_reading()

    def resume_writing(self) -> None:
        self.client.resume_reading()


class _ClientConnection(asyncio.Protocol):
    """One client connection of the gRPC port: admitted by the budget, scanned, relayed."""

    def __init__(self, front: GrpcFront) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.peer = ""
        self.counted = False
        self.closing = False
        self.scanner = FrameScanner(front.limits.max_header_bytes)
        self._early: list[bytes] = []  # what the client sent before the upstream connection was made
        self._timer: asyncio.TimerHandle | None = None
        self._upstream_port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        why = self.front.budget.take(self.peer)
        if why is not None:
            text = "too many open gRPC connections" if why == "too_many_connections" else "too many open gRPC connections from your address"
            self.refuse(why, text + "; retry shortly")
            return
        self.counted = True
        self.front.connections.add(self)
        self.front.idle.clear()
        self.front.metrics.grpc_connections_open.set(self.front.budget.open)
        self._timer = asyncio.get_running_loop().call_later(self.front.limits.header_timeout_s, self._preface_late)
        asyncio.get_running_loop().create_task(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: _Upstream(self), "127.0.0.1", self.front.upstream_port)
        except OSError as exc:
            log.debug("gRPC relay: cannot reach the gRPC server (%s)", exc)
            self.close("upstream")
            return
        if self.closing or self.transport is None or self.transport.is_closing():
            upstream.transport.close()  # type: ignore[union-attr]
            return
        self.upstream = upstream
        self._upstream_port = upstream.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        self.front.peers[self._upstream_port] = self.peer  # before any byte reaches gRPC, so every call finds its client
        for chunk in self._early:
            upstream.transport.write(chunk)  # type: ignore[union-attr]
        self._early.clear()

    def _preface_late(self) -> None:
        self._timer = None
        if not self.scanner.preface_seen:
            self.close("header_timeout")

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # refused or closing: read and drop
        why = self.scanner.feed(data)
        if why is not None:
            self.close(why)
            return
        if self.scanner.preface_seen and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self.upstream is not None and self.upstream.transport is not None and self.upstream.transport.can_write_eof():
            self.upstream.transport.write_eof()
            return True  # keep our side open for gRPC's last frames
        return None

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def upstream_closed(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            self.transport.close()  # after what gRPC wrote last has been sent

    def refuse(self, reason: str, text: str) -> None:
        """Answer once with SETTINGS + GOAWAY, half-close, and close after LINGER_S whatever the client does."""
        self.front.metrics.grpc_refused.labels(reason=reason).inc()
        self.closing = True
        assert self.transport is not None
        self.transport.write(goaway(text))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def close(self, reason: str) -> None:
        if self.closing:
            return
        log.debug("closing a gRPC connection from %s: %s", self.peer, reason)
        self.front.metrics.grpc_refused.labels(reason=reason).inc()
        self.closing = True
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.abort()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.counted:
            self.counted = False
            self.front.budget.release(self.peer)
            self.front.connections.discard(self)
            self.front.metrics.grpc_connections_open.set(self.front.budget.open)
            if not self.front.connections:
                self.front.idle.set()
        self.front.peers.pop(self._upstream_port, None)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


class GrpcFront:
    """The gRPC port: admits, scans and relays client connections to gRPC's server on `upstream_port`."""

    def __init__(self, limits: FrontLimits, metrics: Metrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.budget = ConnectionBudget(limits.max_connections, limits.max_connections_per_client)
        self.connections: set[_ClientConnection] = set()
        self.peers: dict[int, str] = {}  # the relay's local port on the loopback -> the client's address
        self.upstream_port = 0
        self.idle = asyncio.Event()  # set while no client connection is open
        self.idle.set()
        self._server: asyncio.AbstractServer | None = None

    async def listen(self, host: str, port: int, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ClientConnection(self), host, port, reuse_address=True, backlog=1024)

    def peer_of(self, grpc_peer: str) -> str:
        """The client behind one of the relay's connections, from gRPC's peer string ('ipv4:127.0.0.1:51234')."""
        kind, _, rest = grpc_peer.partition(":")
        address, _, port = rest.rpartition(":")
        if kind in ("ipv4", "ipv6") and port.isdigit() and int(port) in self.peers:
            return self.peers[int(port)]
        return address.strip("[]") or grpc_peer  # a direct loopback connection to gRPC's own port

    def stop_listening(self) -> None:
        """Close the listener (the drain); connections already open go on until gRPC's server has finished them."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def close(self, timeout: float = 1.0) -> None:
        """After gRPC's server has stopped: close what is left, waiting up to `timeout` for the sockets to go."""
        self.stop_listening()
        for connection in list(self.connections):
            connection.upstream_closed()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), timeout)
