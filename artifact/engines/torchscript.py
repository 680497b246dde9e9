"""TorchScript: the tutorial's graph-mode artifacts (fp32, dynamic int8, int8-calibrated) run with torch. The forward
releases the GIL, so the workers' threads run batches side by side on one copy of the weights."""

from __future__ import annotations

import io

import torch

from artifact.encoding import PaddedBatch
from artifact.engines import EngineSpec, ModelFiles, register
from artifact.errors import ArtifactError, KernelUnsupported
from artifact.kernels import require_fixed_range_kernel
from artifact.manifest import Manifest
from artifact.quiet import load_module

NAME = "torchscript"


class TorchScriptEngine:
    name = NAME

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.module = module
        self.module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)  # serving never needs autograd; keeps every call in one grad mode

    def logits(self, padded: PaddedBatch) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(*padded.args())[0]


def load(files: ModelFiles, _streams: int, _threads: int) -> TorchScriptEngine:
    """From the verified bytes (threads are process-wide for torch: app's configure_process sets them)."""
    try:
        return TorchScriptEngine(load_module(io.BytesIO(files.model)))
    except Exception as exc:  # torch raises RuntimeError and others for bytes it cannot deserialize
        raise ArtifactError(f"cannot load {files.model_file}: {str(exc).splitlines()[0]}") from exc


def check(manifest: Manifest) -> None:
    """Fixed-range int8 (activations quantized with calibrated constants) needs fbgemm-packed weights and, at widths
    whose pair sums overflow int16, a CPU whose int8 GEMM does not saturate (VNNI). fp32 and dynamic int8 run anywhere."""
    scheme = manifest.int8
    if scheme is None or scheme.activation_bits is None:
        return
    try:
        require_fixed_range_kernel(scheme.activation_bits, scheme.weight_bits)
    except KernelUnsupported:
        raise
    except Exception as exc:  # pragma: no cover - the kernel probe itself failed
        raise KernelUnsupported(str(exc)) from exc


register(EngineSpec(NAME, load, lambda: None, check, description="torch.jit (TorchScript), the tutorial's engine"))
