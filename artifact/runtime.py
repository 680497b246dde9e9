"""Load a verified artifact and score batches of sentence pairs with it; knows nothing of HTTP or of training."""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from artifact.encoding import EncodedPair, PaddedBatch, PairEncoder, pad_batch, paraphrase_scores
from artifact.errors import ArtifactError, KernelUnsupported
from artifact.kernels import require_fixed_range_kernel
from artifact.manifest import MANIFEST_FILE, Manifest, Variant, read_manifest, variant_folders, verify_artifact
from artifact.quiet import load_module

log = logging.getLogger(__name__)

Padding = Literal["auto", "fixed", "buckets"]
# What to serve from an artifacts root, best first: batch-invariant int8, then dynamic int8, then fp32.
SERVING_PREFERENCE = (Variant.INT8_CALIBRATED, Variant.INT8, Variant.FP32)


def resolve_padding(padding: Padding, manifest: Manifest) -> Literal["fixed", "buckets"]:
    """auto: length buckets for batch-invariant artifacts (same answers, less padding), else the fixed trace shape."""
    if padding == "auto":
        return "buckets" if manifest.is_batch_invariant else "fixed"
    return padding


def check_runnable(manifest: Manifest) -> None:
    """KernelUnsupported when this process cannot reproduce the artifact's verified int8 numerics."""
    if manifest.variant != Variant.INT8_CALIBRATED:
        return  # fp32 and dynamic int8 run on every engine and kernel path
    scheme = manifest.int8
    if scheme is None or scheme.activation_bits is None:
        raise ArtifactError(f"{manifest.name} ({manifest.variant}) records no int8 widths: rebuild the artifact")
    try:
        require_fixed_range_kernel(scheme.activation_bits, scheme.weight_bits)
    except KernelUnsupported as exc:
        raise KernelUnsupported(f"{manifest.name} ({manifest.variant}) cannot run here: {exc}") from exc


@dataclass(frozen=True)
class Choice:
    """The artifact folder to serve, and why it was chosen (one log line); `fallback` when it is not what was asked."""

    folder: Path
    reason: str
    fallback: bool = False


def choose_artifact(path: Path) -> Choice:
    """The folder to serve for `path`: a variant folder, or an artifacts root holding several.

    A root serves the best variant this host can run (SERVING_PREFERENCE). A variant folder this host cannot run
    falls back to the best runnable sibling, so an image or cache built on a VNNI host still serves on an AVX2 one;
    only when nothing there can run is it refused.
    """
    if (path / MANIFEST_FILE).is_file():
        wanted = read_manifest(path)
        try:
            check_runnable(wanted)
            return Choice(path, f"{wanted.variant} as configured")
        except KernelUnsupported as exc:
            refusal = exc
        candidates = [f for f in variant_folders(path.parent, SERVING_PREFERENCE) if f != path]
    else:
        if not path.is_dir():
            raise ArtifactError(f"artifact folder {path} does not exist")
        refusal = None
        candidates = variant_folders(path, SERVING_PREFERENCE)
        if not candidates:
            raise ArtifactError(
                f"{path} holds no artifact: neither a {MANIFEST_FILE} nor a variant folder ({', '.join(SERVING_PREFERENCE)})"
            )
    skipped = []
    for folder in candidates:
        manifest = read_manifest(folder)
        try:
            check_runnable(manifest)
        except KernelUnsupported as exc:
            skipped.append(str(exc))
            continue
        why = f"{refusal}; serving {manifest.variant} from {folder.name}/ instead" if refusal else f"best variant this host runs in {path}"
        return Choice(folder, why + (f" (skipped: {'; '.join(skipped)})" if skipped and not refusal else ""), fallback=refusal is not None)
    if refusal is not None:
        raise refusal
    raise KernelUnsupported(f"no variant in {path} can run here: {'; '.join(skipped)}")


@dataclass(frozen=True)
class BatchResult:
    """Scores of the real rows of one forward pass, and what it cost."""

    scores: list[float]
    padded: PaddedBatch
    seconds: float
    logits: list[tuple[float, float]]  # (not_paraphrase, paraphrase) per real row


class Runtime:
    """A TorchScript paraphrase classifier, its tokenizer, and the input shapes its build verified."""

    def __init__(self, artifact_dir: Path, manifest: Manifest, module: torch.jit.ScriptModule, padding: Padding = "auto") -> None:
        self.artifact_dir = artifact_dir
        self.manifest = manifest
        self.module = module
        self.padding = resolve_padding(padding, manifest)
        self.batch_size = manifest.trace_shape.batch_size
        self.seq_len = manifest.trace_shape.seq_len
        trace_shape = (self.batch_size, self.seq_len)
        # Only shapes the build verified; "fixed" is the tutorial's single 8x128 shape.
        verified = set(manifest.verified_shapes) | {trace_shape}
        self.shapes = sorted(verified) if self.padding == "buckets" else [trace_shape]
        self.columns = sorted({c for _, c in self.shapes})
        try:
            self.encoder = PairEncoder(artifact_dir / manifest.tokenizer.file, manifest.tokenizer.max_length)
        except Exception as exc:  # the tokenizers library raises its own Exception for a malformed file
            raise ArtifactError(f"cannot read {artifact_dir / manifest.tokenizer.file}: {str(exc).splitlines()[0]}") from exc

    @classmethod
    def load(cls, artifact_dir: Path, *, padding: Padding = "auto") -> Runtime:
        """Verify the manifest and sha256, then load model.pt on the CPU.

        Changes nothing process-wide: threads, the quantized engine, the graph executor and the allocator are
        `configure_process`'s, called once at start, before any load (int8 weights are repacked for the engine
        active when the module is deserialized).
        """
        manifest = verify_artifact(artifact_dir)
        check_runnable(manifest)
        try:
            module = load_module(artifact_dir / manifest.model_file)
        except Exception as exc:  # torch raises RuntimeError and others for a file it cannot deserialize
            raise ArtifactError(f"cannot load {artifact_dir / manifest.model_file}: {str(exc).splitlines()[0]}") from exc
        module.eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)  # serving never needs autograd; keeps every call in one grad mode
        log.info("loaded %s (%s, %d bytes, sha256 %s)", manifest.name, manifest.variant, manifest.model_bytes, manifest.model_sha256[:12])
        if manifest.source.random_init:
            log.warning("%s was built from a random checkpoint (init-tiny): its answers are random, not a paraphrase model", manifest.name)
        return cls(artifact_dir, manifest, module, padding)

    @property
    def variant(self) -> str:
        return str(self.manifest.variant)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def sha256(self) -> str:
        return self.manifest.model_sha256

    @property
    def model_bytes(self) -> int:
        return self.manifest.model_bytes

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
        started = time.perf_counter()
        logits = self._logits(padded)
        seconds = time.perf_counter() - started
        real = logits[: padded.rows]
        scores = paraphrase_scores(real)
        if len(scores) != len(rows):
            raise RuntimeError(f"model returned {len(scores)} scores for {len(rows)} rows")
        return BatchResult(scores, padded, seconds, [(float(a), float(b)) for a, b in real.float().tolist()])

    def _logits(self, padded: PaddedBatch) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(*padded.args())[0]

    def batches(self, rows: Sequence[EncodedPair]) -> Iterator[BatchResult]:
        """Forward rows batch_size at a time, in order (offline use: evaluation, checks)."""
        for start in range(0, len(rows), self.batch_size):
            yield self.forward(rows[start : start + self.batch_size])

    def predict(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Score any number of pairs in order."""
        return [score for result in self.batches(self.encode(pairs)) for score in result.scores]

    def warm_up(self, rounds: int = 2) -> None:
        """Run every shape this runtime may use, so no request pays for lazy initialisation or JIT profiling."""
        row = self.encode([("warm up", "warming up")])[0]
        for _ in range(rounds):
            for n_rows, cols in self.shapes:
                self._logits(pad_batch([row] * n_rows, n_rows, cols))


@dataclass(frozen=True)
class ProcessSettings:
    """What `configure_process` set, for the start-up log and GET /model."""

    threads: int
    quantized_engine: str
    simple_executor: bool
    malloc_tuned: bool


def configure_process(*, threads: int = 1, quantized_engine: str | None = None) -> ProcessSettings:
    """The process-wide settings a runtime needs, applied once and explicitly, before any `Runtime.load`.

    `threads`: torch intra-op threads per forward. `quantized_engine`: torch.backends.quantized.engine (None keeps
    torch's default, x86). The TorchScript simple executor and glibc's allocator settings are the measured defaults
    (see the two functions below). Everything here is global to the process, which is why it is not a side effect
    of loading.
    """
    torch.set_num_threads(threads)
    if quantized_engine:
        torch.backends.quantized.engine = quantized_engine
    _use_simple_executor()
    tuned = _keep_freed_memory()
    return ProcessSettings(threads, torch.backends.quantized.engine, True, tuned)


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
