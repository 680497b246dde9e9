"""Real `python -m app` processes on 127.0.0.1 for tests that need HTTP over a socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(artifact: Path, **settings: str) -> Iterator[str]:
    """Start the service on a free loopback port, wait for /readyz, yield its URL; SIGTERM must end it with 0."""
    port = free_port()
    env = dict(os.environ, PARASERVE_ARTIFACT_DIR=str(artifact), PARASERVE_PORT=str(port), PARASERVE_LOG_LEVEL="warning")
    env.update({f"PARASERVE_{k.upper()}": v for k, v in settings.items()})
    process = subprocess.Popen([sys.executable, "-m", "app"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"server exited with {process.returncode}"
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become ready in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        code = process.wait(30)
    assert code == 0, f"server exited with {code} after SIGTERM"
