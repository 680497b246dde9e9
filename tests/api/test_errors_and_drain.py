"""Bounded error handling: a failure the client did not cause is one JSON 500 and at most one traceback a
minute; gauges return to zero after it; at shutdown, a request on a kept-alive connection is answered, not dropped."""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.main import create_app
from app.shared.logs import ExceptionLog
from artifact.encoding import EncodedPair
from tests.api.conftest import GatedRuntime, settings_for
from tests.harness.server import start_server

PAIR = {"sentence1": "a cat", "sentence2": "a dog"}


def test_the_same_unexpected_error_logs_one_traceback_then_one_line_each(caplog: pytest.LogCaptureFixture):
    log = ExceptionLog(logging.getLogger("app.test"), period_s=60)

    def fail() -> None:
        raise ValueError("boom " + "x" * 500)

    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            try:
                fail()
            except ValueError as exc:
                log("request failed", exc)
    tracebacks = [r for r in caplog.records if r.exc_info]
    lines = [r for r in caplog.records if not r.exc_info]
    assert len(tracebacks) == 1 and len(lines) == 2
    assert all(len(r.getMessage()) < 300 and "ValueError: boom" in r.getMessage() for r in lines)


def broken_encode(pairs: Sequence[tuple[str, str]]) -> list[EncodedPair]:
    raise RuntimeError("tokenizer bug")


def test_a_tokenizer_failure_is_one_500_and_leaves_no_pairs_pending(
    int8_dir: Path, runtime: GatedRuntime, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    app = create_app(settings_for(int8_dir), runtime=runtime, registry=CollectorRegistry())
    with TestClient(app) as client:
        monkeypatch.setattr(runtime, "encode", broken_encode)  # after the warm-up, which tokenizes too
        with caplog.at_level(logging.ERROR):
            answers = [client.post("/predict", json={"pairs": [PAIR] * 64}) for _ in range(3)]
        pending = next(line for line in client.get("/metrics").text.splitlines() if line.startswith("paraserve_tokenize_pending_pairs"))
    assert {(r.status_code, r.json()["error_type"]) for r in answers} == {(500, "inference")}
    assert pending.endswith(" 0.0")  # it stayed at 64 after the first failure
    assert sum(1 for r in caplog.records if r.exc_info) == 1  # one traceback, then one line per failure


def test_an_unexpected_exception_in_a_route_is_a_json_500_not_a_traceback_per_request(
    int8_dir: Path, runtime: GatedRuntime, caplog: pytest.LogCaptureFixture
):
    app = create_app(settings_for(int8_dir), runtime=runtime, registry=CollectorRegistry())

    @app.get("/boom")
    async def boom() -> None:
        raise KeyError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        answers = [client.get("/boom") for _ in range(3)]
    assert {(r.status_code, r.json()["error_type"]) for r in answers} == {(500, "internal")}
    assert all(r.headers["x-request-id"] for r in answers)
    assert sum(1 for r in caplog.records if r.exc_info) == 1


def content_length(head: bytes) -> int:
    lines = head.partition(b"\r\n\r\n")[0].split(b"\r\n")
    return next((int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")), 1 << 30)


@pytest.mark.slow
def test_a_request_on_a_kept_alive_connection_during_the_drain_is_answered_503_and_closed(int8_dir: Path, tmp_path: Path):
    log = tmp_path / "server.log"
    server = start_server(int8_dir, env={"PARASERVE_LOG_LEVEL": "info"}, log_file=log)
    port = int(server.url.rsplit(":", 1)[1])
    request = b"GET /model HTTP/1.1\r\nHost: x\r\n\r\n"
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as kept,
        socket.create_connection(("127.0.0.1", port), timeout=10) as idle,
    ):
        kept.sendall(request)
        first = kept.recv(65536)
        while b"\r\n\r\n" not in first or len(first.partition(b"\r\n\r\n")[2]) < content_length(first):
            first += kept.recv(65536)  # the whole first response, so what comes next is the next answer
        assert first.startswith(b"HTTP/1.1 200")
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the drain has begun; both connections are still read for a second
        answers = []
        for s in (kept, idle):
            s.sendall(request)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            answers.append(got)
    assert server.process.wait(30) == 0
    for got in answers:
        assert got.startswith(b"HTTP/1.1 503") and b"connection: close" in got.lower() and b'"shutting_down"' in got
    assert "2 request(s) answered 503 shutting_down, 0 accepted request(s) left unanswered" in log.read_text()
