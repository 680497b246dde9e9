"""The inference engines an artifact may need, behind one interface: logits for a padded batch.

TorchScript (the tutorial's recipe; every artifact but openvino-int8) runs `model.pt` with torch; OpenVINO runs an
IR (`model.xml` + `model.bin`) on its CPU plugin. The runtime, workers, buckets, warm-up, metrics and every protocol
sit on top and do not know which one answers. OpenVINO is optional: where it is not installed, an OpenVINO artifact
is reported as not runnable here (`KernelUnsupported`), and the artifact choice falls back to TorchScript.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from artifact.encoding import PaddedBatch
from artifact.errors import ArtifactError, KernelUnsupported
from artifact.quiet import load_module

TORCHSCRIPT, OPENVINO = "torchscript", "openvino"
ENGINES = (TORCHSCRIPT, OPENVINO)
# The precision OpenVINO runs its non-int8 ops in. Its default on BF16-capable CPUs is bf16, which makes the scores
# depend on the CPU kind; f32 measured as fast on the AMD EPYC (docs/performance.md), so the build records f32 and
# the runtime always sets it.
OPENVINO_PRECISION = "f32"


class Engine(Protocol):
    """Logits (rows x 2, float32) of a padded batch; safe to call from several worker threads at once."""

    name: str

    def logits(self, padded: PaddedBatch) -> torch.Tensor: ...


class TorchScriptEngine:
    """A TorchScript module; the forward releases the GIL, so workers' threads run batches side by side."""

    name = TORCHSCRIPT

    def __init__(self, model_path: Path) -> None:
        try:
            self.module = load_module(model_path)
        except Exception as exc:  # torch raises RuntimeError and others for a file it cannot deserialize
            raise ArtifactError(f"cannot load {model_path}: {str(exc).splitlines()[0]}") from exc
        self.module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)  # serving never needs autograd; keeps every call in one grad mode

    def logits(self, padded: PaddedBatch) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(*padded.args())[0]


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def require_openvino() -> None:
    """KernelUnsupported when this process cannot run an OpenVINO artifact."""
    if not openvino_available():
        raise KernelUnsupported("OpenVINO is not installed here (pip install '.[openvino]')")


class OpenVINOEngine:
    """One compiled model shared by every worker: each worker thread has its own infer request, and the CPU plugin
    runs `streams` requests at once, each on `threads` threads (streams = workers, threads = torch threads: the same
    one-core-per-worker layout as TorchScript's)."""

    name = OPENVINO

    def __init__(self, model: Path | Any, *, streams: int = 1, threads: int = 1, precision: str = OPENVINO_PRECISION) -> None:
        """`model`: an IR file, or an openvino.Model in memory (the build compiles what it verifies the same way)."""
        require_openvino()
        import openvino as ov

        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "NUM_STREAMS": str(streams),
            "INFERENCE_NUM_THREADS": str(streams * threads),
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
        }
        try:
            self.compiled = ov.Core().compile_model(str(model) if isinstance(model, Path) else model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError for a file or a device it cannot use
            raise ArtifactError(f"cannot compile {model} with OpenVINO: {str(exc).splitlines()[0]}") from exc
        self.config = config
        self._local = threading.local()
        self._output = self.compiled.output(0)

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def logits(self, padded: PaddedBatch) -> torch.Tensor:
        return self.forward(padded.kwargs())

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the named inputs, on this thread's infer request."""
        arrays = {name: np.ascontiguousarray(t.numpy()) for name, t in inputs.items()}
        result = self._request().infer(arrays)
        return torch.from_numpy(np.array(result[self._output], dtype=np.float32, copy=True))


def load_engine(engine: str, model_path: Path, *, streams: int = 1, threads: int = 1) -> Engine:
    """The engine an artifact's manifest names, loaded from its model file."""
    if engine == TORCHSCRIPT:
        return TorchScriptEngine(model_path)
    if engine == OPENVINO:
        return OpenVINOEngine(model_path, streams=streams, threads=threads)
    raise ArtifactError(f"unknown engine {engine!r}; this paraserve runs {', '.join(ENGINES)}: rebuild the artifact")
