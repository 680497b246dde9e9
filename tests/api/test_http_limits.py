"""HTTP limits and small promises: redirects, empty keys, HEAD, signals, a busy port, bad settings and
artifacts, and HTTP-level abuse answered in the one error shape and counted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.shared.config import Settings
from artifact.manifest import sha256_file
from tests.harness.scrape import metric_sum, samples
from tests.harness.server import free_port, start_server

PAIR = {"sentence1": "a cat", "sentence2": "a dog"}


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_clients_host(client: TestClient):
    r = client.post("/predict/", json={"pairs": [PAIR]}, headers={"host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 404 and r.json()["error_type"] == "not_found" and "location" not in r.headers


def test_head_answers_on_the_probes(client: TestClient):
    for path in ("/healthz", "/readyz", "/metrics"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", path
    assert "head" not in json.dumps(client.get("/openapi.json").json()["paths"]["/healthz"])


def test_an_empty_api_key_is_no_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PARASERVE_API_KEY", "")
    assert Settings().api_key is None
    monkeypatch.setenv("PARASERVE_API_KEY", "k")
    assert Settings().api_key is not None


def run_app(artifact: Path, timeout: float = 60, **settings: str) -> subprocess.CompletedProcess[str]:
    """`python -m app` on a free port (no root needed), to its exit."""
    env = dict(os.environ, PARASERVE_ARTIFACT_DIR=str(artifact), PARASERVE_PORT=str(free_port()))
    env.update({f"PARASERVE_{k.upper()}": v for k, v in settings.items()})
    return subprocess.run([sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("queue_capacity", "many", "invalid setting PARASERVE_QUEUE_CAPACITY='many'"),
        ("port", "70000", "invalid setting PARASERVE_PORT='70000'"),
        ("padding", "sideways", "invalid setting PARASERVE_PADDING='sideways'"),
    ],
)
def test_an_invalid_setting_is_one_line_and_exit_2(int8_dir: Path, setting: str, value: str, message: str):
    env = dict(os.environ, PARASERVE_ARTIFACT_DIR=str(int8_dir), **{f"PARASERVE_{setting.upper()}": value})
    result = subprocess.run([sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_unreadable_tokenizer_is_one_line_and_exit_2(int8_dir: Path, tmp_path: Path):
    copy = tmp_path / "int8"
    shutil.copytree(int8_dir, copy)
    (copy / "tokenizer.json").write_text("{not a tokenizer")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = sha256_file(copy / "tokenizer.json")  # consistent, yet unreadable
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run_app(copy)
    assert result.returncode == 2 and "cannot read" in result.stderr and "tokenizer.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_busy_port_fails_before_the_model_is_loaded(int8_dir: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(os.environ, PARASERVE_ARTIFACT_DIR=str(int8_dir), PARASERVE_PORT=str(port))
        result = subprocess.run([sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "loaded" not in result.stderr and "warmed up" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM])
def test_every_stop_signal_drains_in_flight_requests_and_exits_0(int8_dir: Path, sig: signal.Signals, tmp_path: Path):
    log = tmp_path / "server.log"
    server = start_server(int8_dir, env={"PARASERVE_LOG_LEVEL": "info"}, log_file=log)
    answers: list[int | str] = []

    def client() -> None:
        with httpx.Client(timeout=30) as c:  # keep-alive: the drain's Connection: close must reach it before a reset
            for _ in range(20):
                try:
                    answers.append(c.post(f"{server.url}/predict", json={"pairs": [PAIR] * 8}).status_code)
                except httpx.ConnectError:
                    answers.append("refused")  # the listener is closed: nothing was accepted, the client may retry elsewhere
                    return
                except httpx.HTTPError as exc:
                    answers.append(type(exc).__name__)  # sent, then dropped: what must never happen
                    return

    threads = [threading.Thread(target=client) for _ in range(7)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    server.process.send_signal(sig)
    for t in threads:
        t.join(60)
    assert server.process.wait(60) == 0
    assert answers and set(answers) <= {200, 503, "refused"} and 200 in answers, answers
    assert "0 accepted request(s) left unanswered" in log.read_text()


@pytest.mark.slow
def test_http_level_abuse_is_answered_in_the_error_shape_and_counted(int8_dir: Path):
    server = start_server(int8_dir, header_timeout_s="1", body_timeout_s="1", max_header_bytes="4096", max_connections="8")
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])

    def exchange(data: bytes, wait: float = 5) -> bytes:
        chunks = []
        with socket.create_connection((host, port), timeout=wait) as s:
            try:
                if data:
                    s.sendall(data)
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            except (ConnectionResetError, BrokenPipeError):
                pass  # closed while we still sent: the answer may be lost with the rest of the stream (TCP reset)
        return b"".join(chunks)

    def status_and_body(raw: bytes) -> tuple[int, dict]:
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    try:
        assert exchange(b"") == b""  # a silent connection is closed, without a response
        assert status_and_body(exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")) == (
            408,
            {"error": "request headers not complete within 1 s", "error_type": "request_timeout"},
        )
        half = b'POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"pairs"'
        assert status_and_body(exchange(half))[0] == 408
        for size in (8_000, 1_000_000):  # arriving whole in one read, and over many
            big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
            answer = exchange(big)
            assert (size > 65536 and answer == b"") or status_and_body(answer)[1]["error_type"] == "headers_too_large"
        malformed = (400, {"error": "malformed HTTP request", "error_type": "bad_request"})
        assert status_and_body(exchange(b"NOT HTTP AT ALL\r\n\r\n")) == malformed
        held = [socket.create_connection((host, port)) for _ in range(8)]
        try:
            time.sleep(0.2)
            refused = exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_and_body(refused)[1]["error_type"] == "too_many_connections" and b"retry-after: 1" in refused
        finally:
            for s in held:
                s.close()
        time.sleep(0.3)
        values = samples(httpx.get(f"{server.url}/metrics").text)
        closed = {r: metric_sum(values, "paraserve_connections_closed_total", reason=r) for r in (
            "idle", "header_timeout", "body_timeout", "headers_too_large", "bad_request", "too_many_connections")}  # fmt: skip
        assert all(v >= 1 for v in closed.values()), closed
        assert metric_sum(values, "paraserve_errors_total", error_type="request_timeout") >= 2
    finally:
        assert server.stop(30) == 0
