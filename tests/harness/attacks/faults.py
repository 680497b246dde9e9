"""Faults around a serving process: its weights file truncated under it, and a second stop signal during the drain.
Each starts its own server (on a copy of the artifact where it alters files) and reports what the clients saw."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from model_build.parity_pairs import PARITY_PAIRS
from tests.harness.load import Tally, http_load, sampled
from tests.harness.server import free_port, start_server

LOAD = sampled(PARITY_PAIRS)


@dataclass
class FaultOutcome:
    text: str
    exit_code: int | None
    tally: Tally
    unanswered: int  # the server's own count of accepted requests it left unanswered (-1: no drain line)


def _drain_count(log: Path) -> int:
    lines = [line for line in log.read_text(errors="replace").splitlines() if "left unanswered" in line]
    if not lines:
        return -1
    return int(lines[-1].split(" accepted request(s) left unanswered")[0].rsplit(",", 1)[1])


async def truncated_weights(artifact: Path, seconds: float, log: Path) -> FaultOutcome:
    """Serve a copy of `artifact` under load and truncate its largest weights file (model.bin of an OpenVINO artifact,
    model.pt otherwise) to half halfway through: the process must keep serving what it loaded, then drain and exit 0."""
    folder = Path(tempfile.mkdtemp(prefix="paraserve-truncate-")) / artifact.name
    shutil.copytree(artifact, folder)
    weights = max(folder.iterdir(), key=lambda f: f.stat().st_size if f.suffix in (".bin", ".pt") else -1)
    server = start_server(folder, log_file=log, env={"PARASERVE_LOG_LEVEL": "info"})
    tally = Tally()
    load = asyncio.ensure_future(http_load(server.url, LOAD, 4, seconds, tally=tally))
    await asyncio.sleep(seconds / 2)
    size = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(size // 2)
    await load
    alive = server.process.poll() is None
    code = server.stop(60)
    shutil.rmtree(folder.parent, ignore_errors=True)
    text = f"{weights.name} {size} -> {size // 2} bytes under load; process {'alive' if alive else 'dead'} after; " + ", ".join(
        f"{k} x{v}" for k, v in sorted(tally.statuses.items())
    )
    return FaultOutcome(text, code, tally, _drain_count(log))


async def double_signal(artifact: Path, seconds: float, log: Path, grpc: bool = True) -> FaultOutcome:
    """Load, then SIGTERM, then a second SIGTERM and a SIGINT during the drain: every accepted request answered or
    refused cleanly, exit 0. The drain is held open by a request whose body is still arriving at the first signal (the
    drain gives such a body one more second): it completes after the second and third signals and must be answered."""
    settings = {"grpc_port": str(free_port())} if grpc else {}
    server = start_server(artifact, log_file=log, env={"PARASERVE_LOG_LEVEL": "info"}, shutdown_grace_s="30", **settings)
    tally = Tally()
    load = asyncio.ensure_future(http_load(server.url, LOAD, 8, seconds * 2, fresh_connections=True, tally=tally))
    await asyncio.sleep(seconds)
    a, b = PARITY_PAIRS[0]
    body = json.dumps({"pairs": [{"sentence1": a, "sentence2": b}]}).encode()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
    writer.write(body[:10])
    await writer.drain()
    await asyncio.sleep(0.2)  # the headers are read: the request is accepted, its body arriving
    server.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    server.process.send_signal(signal.SIGTERM)
    server.process.send_signal(signal.SIGINT)
    await asyncio.sleep(0.2)
    writer.write(body[10:])
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(65536), 30)
    except (TimeoutError, ConnectionError):
        answer = b""
    writer.close()
    tally.statuses[answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "reset"] += 1
    await load
    started = time.monotonic()
    try:
        code: int | None = server.process.wait(45)
    except subprocess.TimeoutExpired:
        server.process.kill()
        code = None
    text = f"exit {code} {time.monotonic() - started:.1f} s after the load ended; " + ", ".join(
        f"{k} x{v}" for k, v in sorted(tally.statuses.items())
    )
    return FaultOutcome(text, code, tally, _drain_count(log))
