"""One start for every launcher: `python -m app`, `uvicorn --factory app.main:create_app` and each Ray Serve replica.

`open_runtime` applies the process-wide settings once (threads, quantized engine, executor, allocator), chooses
the artifact this host can run (a configured int8-calibrated that needs VNNI falls back to its best runnable
sibling on an AVX2-only host, with one log line saying so) and loads it. The lifespan calls it when no runtime was
handed in, so all three launchers serve the same variant on the same host; `python -m app` calls it itself only
to fail fast (exit 2) before uvicorn starts. What differs between launchers is only the HTTP server in front:
`python -m app` runs uvicorn with paraserve's connection guards (app/protocol.py); under `uvicorn --factory` or a
Ray Serve proxy the server is theirs, with their own limits.
"""

from __future__ import annotations

import logging

from app.config import Settings
from artifact.runtime import Runtime, choose_artifact, configure_process

log = logging.getLogger(__name__)


def open_runtime(settings: Settings) -> Runtime:
    """Configure this process, choose the runnable artifact for `settings.artifact_dir`, load it (UserError if none)."""
    applied = configure_process(threads=settings.torch_threads, quantized_engine=settings.quantized_engine)
    choice = choose_artifact(settings.artifact_dir)
    log.log(logging.WARNING if choice.fallback else logging.INFO, "serving %s: %s", choice.folder, choice.reason)
    runtime = Runtime.load(choice.folder, padding=settings.padding)
    log.info(
        "process: %d torch thread(s) per worker, quantized engine %s, simple executor, malloc tuned: %s",
        applied.threads,
        applied.quantized_engine,
        applied.malloc_tuned,
    )
    return runtime
