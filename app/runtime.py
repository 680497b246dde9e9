"""Load a verified artifact and score batches of sentence pairs with it; knows nothing of HTTP."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from model_build.artifact import ArtifactError, verify_artifact
from model_build.calibration import require_fixed_range_kernel
from model_build.encoding import EncodedPair, PaddedBatch, PairEncoder, pad_batch, paraphrase_scores
from model_build.errors import BuildError
from model_build.quiet import deprecations_silenced

log = logging.getLogger(__name__)

Padding = Literal["auto", "fixed", "buckets"]


def batch_invariant(manifest: dict[str, Any]) -> bool:
    """Whether the build showed this artifact's logits for a row do not depend on its batch or padding."""
    return bool((manifest.get("batch_invariance") or {}).get("batch_invariant"))


def resolve_padding(padding: Padding, manifest: dict[str, Any]) -> Literal["fixed", "buckets"]:
    """auto: length buckets for batch-invariant artifacts (same answers, less padding), else the fixed trace shape."""
    if padding == "auto":
        return "buckets" if batch_invariant(manifest) else "fixed"
    return padding


@dataclass(frozen=True)
class BatchResult:
    """Scores of the real rows of one forward pass, and what it cost."""

    scores: list[float]
    padded: PaddedBatch


class Runtime:
    """A TorchScript paraphrase classifier, its tokenizer, and the input shapes its build verified."""

    def __init__(self, artifact_dir: Path, manifest: dict[str, Any], module: torch.jit.ScriptModule, padding: Padding = "auto") -> None:
        self.artifact_dir = artifact_dir
        self.manifest = manifest
        self.module = module
        self.padding = resolve_padding(padding, manifest)
        self.batch_size: int = manifest["trace_shape"]["batch_size"]
        self.seq_len: int = manifest["trace_shape"]["seq_len"]
        trace_shape = (self.batch_size, self.seq_len)
        # Only shapes the build verified; "fixed" is the tutorial's single 8x128 shape.
        verified = {(int(r), int(c)) for r, c in manifest.get("verified_shapes", [trace_shape])} | {trace_shape}
        self.shapes = sorted(verified) if self.padding == "buckets" else [trace_shape]
        self.columns = sorted({c for _, c in self.shapes})
        tokenizer = manifest["tokenizer"]
        self.encoder = PairEncoder(artifact_dir / tokenizer["file"], int(tokenizer["max_length"]))

    @classmethod
    def load(cls, artifact_dir: Path, *, threads: int = 1, padding: Padding = "auto", quantized_engine: str | None = None) -> Runtime:
        """Verify the manifest and sha256, then load model.pt on the CPU with `threads` intra-op threads."""
        manifest = verify_artifact(artifact_dir)
        torch.set_num_threads(threads)
        if quantized_engine:
            # Before loading: int8 weights are repacked for the active engine when the module is deserialized.
            torch.backends.quantized.engine = quantized_engine
        _check_int8_kernel(manifest)
        with deprecations_silenced():
            module = torch.jit.load(str(artifact_dir / manifest["model_file"]), map_location="cpu")
        module.eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)  # serving never needs autograd; keeps every call in one grad mode
        _use_simple_executor()
        _keep_freed_memory()
        log.info(
            "loaded %s (%s, %d bytes, sha256 %s)",
            manifest["name"],
            manifest["variant"],
            manifest["model_bytes"],
            manifest["model_sha256"][:12],
        )
        return cls(artifact_dir, manifest, module, padding)

    @property
    def variant(self) -> str:
        return str(self.manifest["variant"])

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def sha256(self) -> str:
        return str(self.manifest["model_sha256"])

    @property
    def model_bytes(self) -> int:
        return int(self.manifest["model_bytes"])

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[EncodedPair]:
        """Tokenize pairs exactly as the build verified (longest_first truncation to the trace length)."""
        return self.encoder.encode(pairs)

    def shape_for(self, rows: Sequence[EncodedPair]) -> tuple[int, int]:
        """The cheapest verified (rows, columns) shape holding these rows: always 8x128 with fixed padding."""
        need = max(len(r) for r in rows)
        return min((r * c, (r, c)) for r, c in self.shapes if r >= len(rows) and c >= need)[1]

    def columns_for(self, row: EncodedPair) -> int:
        """The smallest verified column count holding this row (the batcher groups rows by it)."""
        return next(c for c in self.columns if c >= len(row))

    def forward(self, rows: Sequence[EncodedPair]) -> BatchResult:
        """Run up to batch_size rows padded to a verified shape; return P(paraphrase) per real row."""
        padded = pad_batch(rows, *self.shape_for(rows))
        logits = self._logits(padded)
        scores = paraphrase_scores(logits[: padded.rows])
        if len(scores) != len(rows):
            raise RuntimeError(f"model returned {len(scores)} scores for {len(rows)} rows")
        return BatchResult(scores, padded)

    def _logits(self, padded: PaddedBatch) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(*padded.args())[0]

    def predict(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Score any number of pairs, batch_size at a time in order (offline use: evaluation, checks)."""
        rows = self.encode(pairs)
        scores: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            scores += self.forward(rows[start : start + self.batch_size]).scores
        return scores

    def warm_up(self, rounds: int = 2) -> None:
        """Run every shape this runtime may use, so no request pays for lazy initialisation or JIT profiling."""
        row = self.encode([("warm up", "warming up")])[0]
        for _ in range(rounds):
            for n_rows, cols in self.shapes:
                self._logits(pad_batch([row] * n_rows, n_rows, cols))


def _check_int8_kernel(manifest: dict[str, Any]) -> None:
    """The build's check for int8-calibrated, again here: the artifact may have been built on another machine."""
    if manifest["variant"] != "int8-calibrated":
        return
    try:
        require_fixed_range_kernel((manifest.get("qconfig") or {}).get("activation_bits", 8))
    except BuildError as exc:
        raise ArtifactError(f"{manifest['name']} cannot run here: {exc}") from exc


def _keep_freed_memory() -> bool:
    """glibc only: take the forward's large tensors from the heap and keep freed memory for the next batch.

    By default glibc maps each allocation above its mmap threshold fresh from the kernel and trims the heap on free,
    so a forward can pay page faults for its activations every time: the int8 8x128 forward measured 150-160 ms
    instead of 115 ms in a process's main thread. With a 32 MiB mmap threshold (glibc's maximum; an 8x128 batch's
    largest tensor is 6 MiB) and no trimming below 1 GiB, the peak working set, reached at warm-up, stays resident
    (RSS does not grow under load). Process-wide; a no-op where libc is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def _use_simple_executor() -> None:
    """Run TorchScript on the simple (non-profiling) graph executor.

    The default profiling executor specializes the graph to the shapes of its first calls; once batches come in
    several shapes (padding=buckets) it keeps bailing out, and the 8x128 path measured 1.5x slower after a
    multi-shape warm-up. The simple executor is as fast at a single shape and steady across shapes. Process-wide.
    """
    set_profiling = getattr(torch._C, "_jit_set_profiling_executor", None)
    if set_profiling is not None:
        set_profiling(False)
