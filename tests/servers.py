"""Real `python -m app` processes for tests that need HTTP over a socket."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.local_server import start_server


@contextmanager
def running_server(artifact: Path, **settings: str) -> Iterator[str]:
    """Yield the URL of a ready server; SIGTERM must then end it with exit code 0 (a clean drain)."""
    server = start_server(artifact, **settings)
    try:
        yield server.url
    finally:
        code = server.stop(30)
    assert code == 0, f"server exited with {code} after SIGTERM"
