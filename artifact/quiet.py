"""Silence, by exact message, the deprecation notices torch 2.13 and transformers 5 print on the APIs we use on purpose.

torch 2.13 deprecates TorchScript (torch.jit.*) and the quantized tensor types in favour of torch.export and
torchao; torchao's int8 path measured ~40x slower than fp32 on these CPUs, so paraserve stays on
torch.ao + TorchScript with torch pinned to 2.13.0 (see README). Only these messages are filtered.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

# (message regex, category) pairs; regexes match at the start of the warning text.
KNOWN_NOTICES: tuple[tuple[str, type[Warning]], ...] = (
    (r"`torch\.jit\.\w+` is deprecated", DeprecationWarning),
    (r"torch\.jit\.\w+ is deprecated", DeprecationWarning),
    (r"torch\.ao\.quantization is deprecated", DeprecationWarning),
    (r".*quantized tensor creation functions .* are deprecated", UserWarning),
    # torch.jit.trace walks every parameter's .grad while recording; harmless under no_grad.
    (r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed", UserWarning),
    # transformers 5 calls its own deprecated alias while being traced.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
)

# transformers' mask code branches on a shape; the trace fixes it, and the build verifies every shape it records.
TRACER_NOTICES: tuple[tuple[str, type[Warning]], ...] = (
    (r"Converting a tensor to a Python boolean might cause the trace to be incorrect", Warning),
)


@contextmanager
def deprecations_silenced(*, tracing: bool = False) -> Iterator[None]:
    """Filter the known torch/transformers notices (and, when tracing, the checked tracer notice)."""
    with warnings.catch_warnings():
        for message, category in KNOWN_NOTICES + (TRACER_NOTICES if tracing else ()):
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def load_module(source: Path | io.BytesIO) -> torch.jit.ScriptModule:
    """torch.jit.load on the CPU, with the known notices filtered."""
    with deprecations_silenced():
        return torch.jit.load(source if isinstance(source, io.BytesIO) else str(source), map_location="cpu")


def save_module(module: torch.jit.ScriptModule, target: Path | io.BytesIO) -> None:
    """torch.jit.save, with the known notices filtered."""
    with deprecations_silenced():
        torch.jit.save(module, target if isinstance(target, io.BytesIO) else str(target))


def round_trip(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """The module through bytes and back: a fresh copy with no executor state of the original."""
    buffer = io.BytesIO()
    save_module(module, buffer)
    buffer.seek(0)
    return load_module(buffer)
