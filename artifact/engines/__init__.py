"""The inference engines an artifact may name, as one registry: how each loads, what it needs installed, what it
needs of the CPU, and which engine serves instead when it cannot. Logits for a padded batch, behind one interface.

An engine is one module and one entry of ENGINES (`register`); the runtime, the artifact choice, the workers,
buckets, warm-up, metrics and every protocol only look things up here. TorchScript (artifact/engines/torchscript.py)
runs the tutorial's graph-mode artifacts; OpenVINO (artifact/engines/openvino.py) runs openvino-int8.

Every engine loads from `ModelFiles`: the artifact's files read once into memory and checked against the manifest's
sizes and sha256. Nothing is memory-mapped, so a weights file changed or truncated under a serving process cannot
crash it (OpenVINO mapped model.bin, and truncating it killed the process by SIGBUS); it serves what it verified.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch

from artifact.encoding import PaddedBatch
from artifact.errors import ArtifactError, KernelUnsupported
from artifact.manifest import Manifest


class Engine(Protocol):
    """Logits (rows x 2, float32) of a padded batch; safe to call from several worker threads at once."""

    name: str

    def logits(self, padded: PaddedBatch) -> torch.Tensor: ...


@dataclass(frozen=True)
class ModelFiles:
    """An artifact's model file and the files beside it, as verified bytes in memory (name -> content)."""

    model_file: str
    contents: Mapping[str, bytes]

    @property
    def model(self) -> bytes:
        return self.contents[self.model_file]


def _always(_manifest: Manifest) -> None:
    return None


@dataclass(frozen=True)
class EngineSpec:
    """One engine: its name (the manifest's `engine`), how it loads, what it needs."""

    name: str
    load: Callable[[ModelFiles, int, int], Engine]  # files, streams (workers), threads per stream
    missing: Callable[[], str | None]  # None when this process can run it, else what to install
    check: Callable[[Manifest], None] = _always  # KernelUnsupported when this CPU cannot reproduce the artifact's numerics
    fallback: str | None = None  # the engine whose artifact beside it serves when this one fails to load
    description: str = ""
    extras: tuple[str, ...] = field(default_factory=tuple)  # pyproject extras that install it


ENGINES: dict[str, EngineSpec] = {}


def register(spec: EngineSpec) -> EngineSpec:
    """Add (or replace) an engine; returns it."""
    ENGINES[spec.name] = spec
    return spec


def engine(name: str) -> EngineSpec:
    """The named engine, or an ArtifactError that says which this paraserve runs."""
    try:
        return ENGINES[name]
    except KeyError:
        raise ArtifactError(f"unknown engine {name!r}; this paraserve runs {', '.join(sorted(ENGINES))}: rebuild the artifact") from None


def check_runnable(manifest: Manifest) -> None:
    """KernelUnsupported when this process cannot run the artifact: its engine is not installed here, or the CPU
    cannot reproduce its verified int8 numerics."""
    spec = engine(manifest.engine)
    why = spec.missing()
    try:
        if why is not None:
            raise KernelUnsupported(why)
        spec.check(manifest)
    except KernelUnsupported as exc:
        raise KernelUnsupported(f"{manifest.name} ({manifest.variant}) cannot run here: {exc}") from exc


def load_engine(manifest: Manifest, files: ModelFiles, *, streams: int = 1, threads: int = 1) -> Engine:
    """The engine the manifest names, loaded from the verified files."""
    return engine(manifest.engine).load(files, streams, threads)


# The engines this paraserve ships; each module registers itself.
from artifact.engines import openvino, torchscript  # noqa: E402

TORCHSCRIPT, OPENVINO = torchscript.NAME, openvino.NAME
__all__ = [
    "ENGINES",
    "OPENVINO",
    "TORCHSCRIPT",
    "Engine",
    "EngineSpec",
    "ModelFiles",
    "check_runnable",
    "engine",
    "load_engine",
    "register",
]
