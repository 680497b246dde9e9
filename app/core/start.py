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
from pathlib import Path

from app.shared.config import Settings
from artifact.engines import engine
from artifact.errors import ArtifactError
from artifact.manifest import read_manifest
from artifact.runtime import Runtime, choose_artifact, configure_process

log = logging.getLogger(__name__)


def open_runtime(settings: Settings) -> Runtime:
    """Configure this process, choose the runnable artifact for `settings.artifact_dir`, load it (UserError if none).

    With `PARASERVE_ENGINE=auto` and int8 variants of one kind on several engines in the folder (int8-calibrated on
    TorchScript, openvino-int8 on OpenVINO), each is loaded and timed on this host (a full 8 x 64 batch, the shape the
    service runs under load), and the fastest serves; one log line and GET /model (`selection`) say which and why. An
    artifact whose engine fails to load falls back to its engine's fallback with one warning line, as an AVX2 host
    falls back from 8 x 8 bits.
    """
    applied = configure_process(threads=settings.torch_threads, quantized_engine=settings.quantized_engine)
    choice = choose_artifact(settings.artifact_dir, settings.engine)
    log.log(logging.WARNING if choice.fallback else logging.INFO, "serving %s: %s", choice.folder, choice.reason)
    runtime = _load(choice.folder, settings, fall_back=True)
    runtime.selection = choice.reason
    rivals = [r for r in choice.rivals if r != runtime.artifact_dir]  # none left when OpenVINO fell back to TorchScript
    if rivals:
        timed = {runtime: runtime.time_forward()}
        for rival in rivals:
            try:
                other = _load(rival, settings, fall_back=False)
            except ArtifactError as exc:
                log.warning("engine auto: %s not timed: %s", rival.name, exc)
                continue
            timed[other] = other.time_forward()
        runtime = min(timed, key=lambda r: timed[r])
        figures = ", ".join(f"{r.variant} on {r.engine_name} {t * 1000:.1f} ms" for r, t in sorted(timed.items(), key=lambda kv: kv[1]))
        runtime.selection = f"engine auto: the faster on this host per 8x64 batch (median of 7): {figures}"
        log.info("%s; serving %s", runtime.selection, runtime.variant)
    log.info(
        "process: %d torch thread(s) per worker, quantized engine %s, simple executor, malloc tuned: %s",
        applied.threads,
        applied.quantized_engine,
        applied.malloc_tuned,
    )
    return runtime


def _load(folder: Path, settings: Settings, *, fall_back: bool) -> Runtime:
    """The artifact in `folder`; under `auto`, an artifact whose engine fails to load (`fall_back`) gives way to the
    best one beside it on the engine's fallback (OpenVINO's: TorchScript), with one warning line."""
    try:
        return Runtime.load(folder, padding=settings.padding, workers=settings.workers, threads=settings.torch_threads)
    except ArtifactError as exc:
        instead = engine(read_manifest(folder).engine).fallback
        if not fall_back or settings.engine != "auto" or instead is None:
            raise
        fallback = choose_artifact(folder.parent, instead)
        log.warning("%s; serving %s from %s/ instead", exc, fallback.folder.name, fallback.folder.name)
        return Runtime.load(fallback.folder, padding=settings.padding, workers=settings.workers, threads=settings.torch_threads)
