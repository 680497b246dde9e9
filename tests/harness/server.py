"""Start `python -m app` on a free 127.0.0.1 port and wait until it is ready (tests, benchmarks, reliability runs)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class LocalServer:
    """A running service process, its base URL and, when it serves gRPC, its gRPC target (host:port)."""

    process: subprocess.Popen[bytes]
    url: str
    grpc: str | None = None

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the drain to finish; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    artifact: Path, *, ready_timeout: float = 120, env: dict[str, str] | None = None, log_file: Path | None = None, **settings: str
) -> LocalServer:
    """Spawn the service for `artifact` with PARASERVE_<KEY>=value settings (and `env` added) and wait until it is ready.

    `log_file`: the server's stderr (its log) goes there instead of this process's stderr. A port that `free_port` gave
    can be taken before the server binds it (a client's ephemeral port, under the reliability run's connection floods):
    a start that failed to bind (exit 3) is tried again on new ports, at most BIND_ATTEMPTS times in all.
    """
    for attempt in range(1, BIND_ATTEMPTS + 1):
        if "grpc_port" in settings and attempt > 1:
            settings = {**settings, "grpc_port": str(free_port())}
        try:
            return _start_once(artifact, ready_timeout=ready_timeout, env=env, log_file=log_file, **settings)
        except BindFailed:
            if attempt == BIND_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


BIND_ATTEMPTS = 3


class BindFailed(RuntimeError):
    """The server exited at start-up with uvicorn's start-up failure code (3): a port was taken."""


def _start_once(artifact: Path, *, ready_timeout: float, env: dict[str, str] | None, log_file: Path | None, **settings: str) -> LocalServer:
    port = free_port()
    env = dict(os.environ, **(env or {}), PARASERVE_ARTIFACT_DIR=str(artifact), PARASERVE_HOST="127.0.0.1", PARASERVE_PORT=str(port))
    env.setdefault("PARASERVE_LOG_LEVEL", "warning")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update({f"PARASERVE_{k.upper()}": str(v) for k, v in settings.items()})
    stderr = log_file.open("ab") if log_file is not None else None
    try:
        process = subprocess.Popen([sys.executable, "-m", "app"], env=env, stderr=stderr)
    finally:
        if stderr is not None:
            stderr.close()  # the child holds its own descriptor
    grpc_port = settings.get("grpc_port")
    server = LocalServer(process, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}" if grpc_port else None)
    try:
        wait_ready(server.url, ready_timeout, server.process)
    except TimeoutError:
        server.process.kill()
        raise
    except RuntimeError as exc:
        if server.process.returncode == 3:
            raise BindFailed(str(exc)) from exc
        raise
    return server


def wait_ready(url: str, timeout: float = 120, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll GET /readyz until it answers 200; TimeoutError after `timeout`, RuntimeError if `process` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout:.0f} s")
        time.sleep(0.2)


@contextmanager
def running_server(
    artifact: Path, *, env: dict[str, str] | None = None, log_file: Path | None = None, **settings: str
) -> Iterator[LocalServer]:
    """start_server as a context manager; on exit SIGTERM must end the server with exit code 0 (a clean drain)."""
    server = start_server(artifact, env=env, log_file=log_file, **settings)
    try:
        yield server
    finally:
        code = server.stop()
    if code != 0:
        raise RuntimeError(f"server {server.url} exited with {code} after SIGTERM, not 0")
