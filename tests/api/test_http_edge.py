"""The HTTP edge of `python -m app`: framing, body deadlines, per-client connections, bounded labels and
what a 413 does to its connection; each against a real server over a socket, as a client would see it."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.scrape import metric_sum, samples
from tests.harness.server import LocalServer, start_server

pytestmark = pytest.mark.slow

HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
BODY = json.dumps({"pairs": [{"sentence1": "a cat", "sentence2": "a dog"}]}).encode()


@pytest.fixture(scope="module")
def server(tiny_artifacts: Path) -> Iterator[LocalServer]:
    s = start_server(
        tiny_artifacts / "int8-calibrated",
        max_body_chunks="64",
        body_rate_grace_s="1",
        min_body_rate="240",
        body_timeout_s="3",
        max_connections_per_client="4",
        header_timeout_s="5",
    )
    try:
        yield s
    finally:
        assert s.stop(30) == 0


def address(server: LocalServer) -> tuple[str, int]:
    return "127.0.0.1", int(server.url.rsplit(":", 1)[1])


def exchange(server: LocalServer, data: bytes, *, then: bytes = b"", wait: float = 5, source: str = "127.0.0.1") -> bytes:
    """Send `data` (and `then`, if the server still reads), read until the server closes; what came back.

    AssertionError if the server leaves the connection open for `wait` seconds: every exchange here must end with
    the server closing it."""
    with socket.create_connection(address(server), timeout=wait, source_address=(source, 0)) as s:
        got = b""
        try:
            s.sendall(data)
            if then:
                s.sendall(then)
            while chunk := s.recv(65536):
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open; it sent {got[:200]!r}") from None
    return got


def responses(raw: bytes) -> list[tuple[int, dict]]:
    out = []
    while raw.startswith(b"HTTP/1.1 "):
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        out.append((int(head.split()[1]), json.loads(rest[:length])))
        raw = rest[length:]
    return out


def closes(server: LocalServer, reason: str) -> float:
    return metric_sum(samples(httpx.get(f"{server.url}/metrics").text), "paraserve_connections_closed_total", reason=reason)


def test_content_length_with_transfer_encoding_is_400_and_the_smuggled_request_is_never_answered(server: LocalServer):
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    answer = responses(exchange(server, HEAD + b"content-length: %d\r\ntransfer-encoding: chunked\r\n\r\n" % len(body) + body))
    assert len(answer) == 1 and answer[0][0] == 400 and "RFC 9112" in answer[0][1]["error"]


def test_transfer_encoding_in_http_1_0_is_400(server: LocalServer):
    request = b"POST /predict HTTP/1.0\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    (answer,) = responses(exchange(server, request))
    assert answer[0] == 400 and "HTTP/1.0" in answer[1]["error"]


def test_a_chunked_body_of_too_many_chunks_is_400_framing_but_a_few_chunks_are_fine(server: LocalServer):
    before = closes(server, "framing")
    ok = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:10], BODY[10:])) + b"0\r\n\r\n"
    assert responses(exchange(server, HEAD + b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n" + ok))[0][0] == 200
    (answer,) = responses(exchange(server, HEAD + b"transfer-encoding: chunked\r\n\r\n" + b"1\r\n \r\n" * 65))
    assert answer[0] == 400 and "more than 64 chunks" in answer[1]["error"]
    assert closes(server, "framing") == before + 1


def test_a_413_by_content_length_closes_the_connection_and_reads_no_further(server: LocalServer):
    before = closes(server, "headers_too_large")
    raw = exchange(server, HEAD + b"content-length: 1000000000000\r\n\r\n", then=b"x" * 200_000, wait=10)  # closed by the server
    assert [status for status, _ in responses(raw)] == [413]  # one answer: the rest is never parsed as a next request
    assert closes(server, "headers_too_large") == before  # no false 431 from the body's bytes


def test_a_dripped_body_is_cut_by_the_minimum_rate_after_the_grace(server: LocalServer):
    with socket.create_connection(address(server), timeout=10) as s:
        s.sendall(HEAD + b"content-length: 1000\r\n\r\n{")
        started = time.monotonic()
        got = b""
        try:
            while time.monotonic() - started < 8:
                s.settimeout(0.5)
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    s.sendall(b" ")  # a byte every half second: 2 bytes/s, far under 240
                    continue
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    (answer,) = responses(got)
    # The rate rule, after its 1 s grace, not the 3 s deadline for the whole body (whose message says "within 3 s")
    assert answer[0] == 408 and "under the minimum of 240 bytes/s" in answer[1]["error"]


def test_one_address_cannot_hold_more_than_its_connections(server: LocalServer):
    held = [socket.create_connection(address(server), source_address=("127.0.0.3", 0)) for _ in range(4)]
    try:
        time.sleep(0.2)
        (refused,) = responses(exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", source="127.0.0.3"))
        assert refused[0] == 503 and refused[1]["error_type"] == "too_many_connections" and "your address" in refused[1]["error"]
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # another address is served
    finally:
        for s in held:
            s.close()


def test_request_labels_stay_in_a_known_set_whatever_the_method(server: LocalServer):
    for i in range(20):
        exchange(server, b"X%dYZ /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n" % i)
    text = httpx.get(f"{server.url}/metrics").text
    methods = {dict(labels)["method"] for (name, labels) in samples(text) if name == "paraserve_http_requests_total"}
    assert "other" in methods and methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}
