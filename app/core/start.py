"""One start for every launcher: `python -m app`, `uvicorn --factory app.main:create_app` and each Ray Serve replica.

`open_models` opens every configured model; `open_runtime` applies the process-wide settings once (threads,
quantized engine, executor, allocator), chooses the artifact this host can run (a configured int8-calibrated that
needs VNNI falls back to its best runnable sibling on an AVX2-only host, with one log line saying so) and loads it.
The lifespan calls it when no runtime was handed in, so all three launchers serve the same variants on the same
host; `python -m app` calls it itself only to fail fast (exit 2) before uvicorn starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from app.core.models import Band
from app.core.service import CascadeSpec
from app.shared.config import Settings, parse_band
from artifact.cascade import CascadeFile, is_cascade, read_cascade
from artifact.engines import engine
from artifact.errors import ArtifactError
from artifact.manifest import read_manifest
from artifact.runtime import Runtime, choose_artifact, configure_process

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Repository:
    """What one server serves: runtimes by name (the first is the default) and cascades over them."""

    runtimes: dict[str, Runtime]
    cascades: dict[str, CascadeSpec]


def open_models(settings: Settings) -> Repository:
    """Every model of PARASERVE_MODELS (or artifact_dir alone, named by its manifest), each chosen and loaded as
    `open_runtime` does (engine `auto` per model), and the cascades among them (a folder holding cascade.json; its
    stages are the models whose manifests carry the names it records; PARASERVE_CASCADE_BAND overrides its band)."""
    folders = settings.model_folders()
    if folders is None:
        runtime = open_runtime(settings)
        return Repository({runtime.name: runtime}, {})
    runtimes: dict[str, Runtime] = {}
    files: dict[str, tuple[Path, CascadeFile]] = {}
    for name, folder in folders.items():
        if is_cascade(folder):
            files[name] = (folder, read_cascade(folder))
        else:
            runtimes[name] = open_runtime(settings, folder)
            log.info("model %r: %s %s", name, runtimes[name].name, runtimes[name].variant)
    cascades = {}
    for name, (folder, file) in files.items():
        stages = []
        for stage in (file.fast, file.accurate):
            match = [n for n, rt in runtimes.items() if rt.name == stage]
            if not match:
                raise ArtifactError(
                    f"cascade {name!r} ({folder}) needs a model built as {stage!r}; PARASERVE_MODELS has {', '.join(runtimes)}"
                )
            stages.append(match[0])
        low, high = parse_band(settings.cascade_band) if settings.cascade_band else (file.band.low, file.band.high)
        source = {**file.model_dump(mode="json"), **({"band_override": settings.cascade_band} if settings.cascade_band else {})}
        cascades[name] = CascadeSpec(stages[0], stages[1], Band(low, high), source)
        log.info("cascade %r: %s then %s on fast scores in [%.3f, %.3f)", name, stages[0], stages[1], low, high)
    return Repository(runtimes, cascades)


def open_runtime(settings: Settings, folder: Path | None = None) -> Runtime:
    """Configure this process, choose the runnable artifact for `folder` (default: settings.artifact_dir), load it
    (UserError if none).

    With `PARASERVE_ENGINE=auto` and int8 variants of one kind on several engines in the folder (int8-calibrated on
    TorchScript, openvino-int8 on OpenVINO), each is loaded and timed on this host (a full 8 x 64 batch, the shape the
    service runs under load), and the fastest serves; one log line and GET /model (`selection`) say which and why. An
    artifact whose engine fails to load falls back to its engine's fallback with one warning line, as an AVX2 host
    falls back from 8 x 8 bits.
    """
    applied = configure_process(threads=settings.torch_threads, quantized_engine=settings.quantized_engine)
    choice = choose_artifact(folder or settings.artifact_dir, settings.engine)
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
