"""app/protocol.py and app/__main__.py override uvicorn and h11 internals: the installed versions must be the ones the
guards are tested against (pyproject.toml's pins), and every internal they rely on must still be there, as used."""

from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

import h11
import uvicorn
from packaging.requirements import Requirement
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

ROOT = Path(__file__).resolve().parents[2]


def pinned(name: str) -> Requirement:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, dependencies) if r.name == name)


def test_uvicorn_and_h11_are_within_the_pinned_ranges():
    for name in ("uvicorn", "h11"):
        requirement = pinned(name)
        assert requirement.specifier, f"{name} must be pinned to a tested range, not open-ended"
        assert "<" in str(requirement.specifier), f"{name}: an upper bound, so an untested release is not installed"
        assert requirement.specifier.contains(version(name)), f"{name} {version(name)} is outside {requirement.specifier}"


def test_the_h11_protocol_internals_the_guards_override_are_there():
    for method in ("connection_made", "connection_lost", "data_received", "eof_received", "handle_events", "send_400_response",
                   "on_response_complete", "timeout_keep_alive_handler", "pause_writing", "resume_writing", "shutdown"):  # fmt: skip
        assert callable(getattr(H11Protocol, method, None)), method
    assert list(inspect.signature(H11Protocol.__init__).parameters)[:4] == ["self", "config", "server_state", "app_state"]
    assert list(inspect.signature(H11Protocol.send_400_response).parameters) == ["self", "msg"]
    source = inspect.getsource(H11Protocol)
    for used in ("self.conn = h11.Connection", "self.cycle", "self.flow", "self.connections", "self.client", "self.loop",
                 "except h11.RemoteProtocolError", "self.send_400_response("):  # fmt: skip
        assert used in source, used
    cycle = inspect.getsource(RequestResponseCycle)
    for used in ("self.response_started", "self.response_complete", "self.disconnected", "self.keep_alive", "self.message_event"):
        assert used in cycle, used


def test_the_server_internals_the_drain_overrides_are_there():
    assert list(inspect.signature(uvicorn.Server.shutdown).parameters) == ["self", "sockets"]
    source = inspect.getsource(uvicorn.Server)
    for used in (
        "self._captured_signals",
        "def capture_signals",
        "def handle_exit",
        "self.server_state",
        "self.lifespan",
        "connection.shutdown()",
    ):
        assert used in source, used
    assert "http_protocol_class" in inspect.getsource(uvicorn.Config)


def test_h11s_connection_can_be_subclassed_as_the_framing_guard_does():
    assert list(inspect.signature(h11.Connection.__init__).parameters) == ["self", "our_role", "max_incomplete_event_size"]
    assert callable(h11.Connection.next_event) and hasattr(h11.Connection, "trailing_data")
