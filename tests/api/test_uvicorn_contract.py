"""app/transport/http11.py and app/transport/server.py override uvicorn and h11 internals: the installed versions must be
the pinned ones, and the overrides must still do what they are for when driven against the installed uvicorn and h11
(a connection fed bytes through a stand-in transport, on a real event loop), not merely be present by name."""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import uvicorn
from packaging.requirements import Requirement
from prometheus_client import CollectorRegistry
from uvicorn.server import ServerState

from app.shared.metrics import Metrics
from app.transport.http11 import ConnectionLimits, guarded_protocol
from app.transport.server import DrainingServer

ROOT = Path(__file__).resolve().parents[2]
LIMITS = ConnectionLimits(
    max_body_bytes=1024,
    max_connections=4,
    max_connections_per_client=2,
    header_timeout_s=5.0,
    body_timeout_s=5.0,
    min_body_rate=0.0,
    body_rate_grace_s=5.0,
    max_body_chunks=4,
    send_timeout_s=5.0,
    max_header_bytes=4096,
    max_pipelined=4,
)


def pinned(name: str) -> Requirement:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, dependencies) if r.name == name)


def test_uvicorn_and_h11_are_within_the_pinned_ranges():
    for name in ("uvicorn", "h11"):
        requirement = pinned(name)
        assert requirement.specifier, f"{name} must be pinned to a tested range, not open-ended"
        assert "<" in str(requirement.specifier), f"{name}: an upper bound, so an untested release is not installed"
        assert requirement.specifier.contains(version(name)), f"{name} {version(name)} is outside {requirement.specifier}"


class FakeTransport(asyncio.Transport):
    """What a socket would see: the bytes written, a write_eof, the close."""

    def __init__(self, peer: str) -> None:
        super().__init__()
        self.written = b""
        self.eof = False
        self.closed = asyncio.Event()
        self._peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": (self._peer, 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closed.is_set()

    def close(self) -> None:
        self.closed.set()

    def abort(self) -> None:
        self.closed.set()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def _config() -> uvicorn.Config:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a refused request must never reach the app")

    config = uvicorn.Config(app, http=guarded_protocol(LIMITS, Metrics(CollectorRegistry())), lifespan="off", log_config=None)
    config.load()
    return config


async def _connection(peer: str = "10.0.0.1", config: uvicorn.Config | None = None) -> tuple[Any, FakeTransport]:
    config = config or _config()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = FakeTransport(peer)
    protocol.connection_made(transport)
    return protocol, transport


def test_a_request_refused_at_its_headers_is_answered_once_and_closed_whatever_the_client_does():
    async def scenario() -> tuple[bytes, bool, bool]:
        protocol, transport = await _connection()
        protocol.data_received(b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-length: 99999999\r\n\r\n")
        protocol.data_received(b"x" * 100)  # the client goes on sending: read and dropped, never parsed
        await asyncio.wait_for(transport.closed.wait(), 30)  # the linger ends it (a liveness bound, not a time asserted)
        return transport.written, transport.eof, transport.closed.is_set()

    written, eof, closed = asyncio.run(scenario())
    assert written.startswith(b"HTTP/1.1 413 ") and written.count(b"HTTP/1.1") == 1 and b"payload_too_large" in written
    assert eof and closed


def test_ambiguous_framing_is_refused_before_the_app_with_the_one_error_shape():
    async def scenario() -> bytes:
        protocol, transport = await _connection()
        protocol.data_received(b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n")
        await asyncio.wait_for(transport.closed.wait(), 30)
        return transport.written

    written = asyncio.run(scenario())
    assert written.startswith(b"HTTP/1.1 400 ") and b'"error_type": "bad_request"' in written and b"connection: close" in written


def test_connections_over_the_per_peer_cap_are_refused_at_once():
    async def scenario() -> list[bytes]:
        config, found = _config(), []
        for _ in range(3):
            _, transport = await _connection("10.0.0.9", config)
            found.append(transport.written)
        return found

    first, second, third = asyncio.run(scenario())
    assert first == second == b"" and third.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in third


def test_the_server_hooks_the_drain_overrides_exist_with_their_signatures():
    assert list(inspect.signature(uvicorn.Server.shutdown).parameters) == ["self", "sockets"]
    assert list(inspect.signature(uvicorn.Server.handle_exit).parameters) == ["self", "sig", "frame"]
    assert DrainingServer.capture_signals is not uvicorn.Server.capture_signals
