"""OpenVINO: the openvino-int8 artifact (an IR, model.xml + model.bin, quantized by NNCF) on OpenVINO's CPU plugin.
Optional: where it is not installed an OpenVINO artifact is not runnable here, and its TorchScript sibling serves.

One compiled model is shared by every worker: each worker thread has its own infer request, and the CPU plugin runs
`streams` requests at once, each on `threads` threads (streams = workers, threads = torch threads: the same
one-core-per-worker layout as TorchScript's).
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

import numpy as np
import torch

from artifact.encoding import PaddedBatch
from artifact.engines import EngineSpec, ModelFiles, register
from artifact.errors import ArtifactError
from artifact.manifest import OPENVINO_WEIGHTS_FILE

NAME = "openvino"
# The precision OpenVINO runs its non-int8 ops in. Its default on BF16-capable CPUs is bf16, which makes the scores
# depend on the CPU kind; f32 measured as fast on the AMD EPYC (docs/performance.md), so the build records f32 and
# the runtime always sets it.
PRECISION = "f32"


def missing() -> str | None:
    return None if importlib.util.find_spec("openvino") is not None else "OpenVINO is not installed here (pip install '.[openvino]')"


class OpenVINOEngine:
    name = NAME

    def __init__(self, model: Any, *, streams: int = 1, threads: int = 1, precision: str = PRECISION) -> None:
        """`model`: an openvino.Model (read from verified bytes, or the build's in-memory model)."""
        import openvino as ov

        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "NUM_STREAMS": str(streams),
            "INFERENCE_NUM_THREADS": str(streams * threads),
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
        }
        try:
            self.compiled = ov.Core().compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError for a model or a device it cannot use
            raise ArtifactError(f"cannot compile the model with OpenVINO: {str(exc).splitlines()[0]}") from exc
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


def read(files: ModelFiles) -> Any:
    """The IR from the verified bytes: the XML and the weights, both in memory (never mapped from disk)."""
    import openvino as ov

    try:
        return ov.Core().read_model(files.model, files.contents[OPENVINO_WEIGHTS_FILE])
    except KeyError:
        raise ArtifactError(f"the manifest names no {OPENVINO_WEIGHTS_FILE} beside {files.model_file}: rebuild the artifact") from None
    except Exception as exc:  # a malformed IR
        raise ArtifactError(f"cannot read {files.model_file}: {str(exc).splitlines()[0]}") from exc


def load(files: ModelFiles, streams: int, threads: int) -> OpenVINOEngine:
    if (why := missing()) is not None:
        raise ArtifactError(why)
    return OpenVINOEngine(read(files), streams=streams, threads=threads)


register(EngineSpec(NAME, load, missing, fallback="torchscript", description="OpenVINO's CPU plugin", extras=("openvino",)))
