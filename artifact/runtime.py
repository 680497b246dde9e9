"""Load a verified artifact and score batches of sentence pairs with it; knows nothing of HTTP or of training.

The model runs on the engine its manifest names (artifact/engines.py: TorchScript or OpenVINO); everything here,
and everything above (workers, buckets, warm-up, metrics, protocols), is the same for both.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from artifact.encoding import EncodedPair, InputSpec, PaddedBatch, PairEncoder, pad_batch, paraphrase_scores
from artifact.engines import Engine, ModelFiles, check_runnable, load_engine
from artifact.errors import ArtifactError, KernelUnsupported
from artifact.manifest import MANIFEST_FILE, Manifest, Variant, read_artifact, read_manifest, variant_folders

log = logging.getLogger(__name__)

Padding = Literal["auto", "fixed", "buckets"]
# What to serve from an artifacts root, best first: int8 with fixed activation ranges (either engine: `auto` times
# the engines on this host and serves the faster), then dynamic int8, then fp32.
SERVING_PREFERENCE = (Variant.OPENVINO_INT8, Variant.INT8_CALIBRATED, Variant.INT8, Variant.FP32)


def accuracy_class(manifest: Manifest) -> str:
    """What an artifact's numerics are, whatever its engine: `auto` races the engines of one class against each other.

    Fixed-range int8 (calibrated activation scales: a pair's score does not depend on its batch) is one class on
    every engine; dynamic int8 (scales per batch at run time) another; float a third.
    """
    scheme = manifest.int8
    if scheme is None:
        return "float"
    return "int8-dynamic" if scheme.activation_bits is None else "int8-fixed"


def resolve_padding(padding: Padding, manifest: Manifest) -> Literal["fixed", "buckets"]:
    """auto: length buckets for batch-invariant artifacts (same answers, less padding), else the fixed trace shape.

    Only shapes the build verified, for every engine. OpenVINO could take each batch at its own longest row (dynamic
    shapes): measured 1.06x the pairs/s of buckets, but its CPU plugin caches kernels per distinct shape and RSS grew to
    1.9 GB in 40 s of MRPC traffic (capping that cache made it slower than buckets), so clients would choose the memory.
    """
    if padding == "auto":
        return "buckets" if manifest.is_batch_invariant else "fixed"
    return padding


@dataclass(frozen=True)
class Choice:
    """The artifact folder to serve, and why it was chosen (one log line); `fallback` when it is not what was asked.

    `rivals`: other runnable folders of the same accuracy class on another engine, for `auto` to time against it.
    """

    folder: Path
    reason: str
    fallback: bool = False
    rivals: tuple[Path, ...] = ()


def choose_artifact(path: Path, engine: str = "auto") -> Choice:
    """The folder to serve for `path`: a variant folder, or an artifacts root holding several.

    A root serves the best variant this host can run (SERVING_PREFERENCE, only `engine`'s unless `auto`). A
    variant folder this host cannot run (its int8 widths need VNNI, or its engine is not installed) falls back to the
    best runnable sibling, so an image or cache built elsewhere still serves; only when nothing there can run is it
    refused. With `auto`, the runnable variants of the best one's accuracy class on other engines are its rivals
    (int8-calibrated and openvino-int8 today): the caller times them.
    """
    wanted_engine = None if engine == "auto" else engine
    if (path / MANIFEST_FILE).is_file():
        wanted = read_manifest(path)
        if wanted_engine is not None and wanted.engine != wanted_engine:
            raise ArtifactError(f"{path} is a {wanted.engine} artifact, but PARASERVE_ENGINE is {engine}")
        try:
            check_runnable(wanted)
            return Choice(path, f"{wanted.variant} as configured")
        except KernelUnsupported as exc:
            refusal: KernelUnsupported | None = exc
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
    skipped, runnable = [], []
    for folder in candidates:
        manifest = read_manifest(folder)
        if wanted_engine is not None and manifest.engine != wanted_engine:
            continue
        try:
            check_runnable(manifest)
        except KernelUnsupported as exc:
            skipped.append(str(exc))
            continue
        runnable.append((folder, manifest))
    if not runnable:
        if refusal is not None:
            raise refusal
        raise KernelUnsupported(f"no {wanted_engine or ''} variant in {path} can run here: {'; '.join(skipped) or 'none of that engine'}")
    folder, manifest = runnable[0]
    why = f"{refusal}; serving {manifest.variant} from {folder.name}/ instead" if refusal else f"best variant this host runs in {path}"
    best = accuracy_class(manifest)
    rivals = tuple(f for f, m in runnable[1:] if accuracy_class(m) == best and best != "float" and m.engine != manifest.engine)
    note = f" (skipped: {'; '.join(skipped)})" if skipped else ""
    return Choice(folder, why + note, fallback=refusal is not None or bool(skipped), rivals=rivals if engine == "auto" else ())


@dataclass(frozen=True)
class BatchResult:
    """Scores of the real rows of one forward pass, and what it cost."""

    scores: list[float]
    padded: PaddedBatch
    seconds: float
    logits: list[tuple[float, float]]  # (not_paraphrase, paraphrase) per real row


class Runtime:
    """A paraphrase classifier on its engine, its tokenizer, and the input shapes its build verified."""

    def __init__(self, artifact_dir: Path, manifest: Manifest, engine: Engine, padding: Padding = "auto") -> None:
        self.artifact_dir = artifact_dir
        self.manifest = manifest
        self.engine = engine
        self.selection = ""  # why this artifact serves (set by whoever chose it: a fallback, the engine race)
        self.padding = resolve_padding(padding, manifest)
        self.batch_size = manifest.trace_shape.batch_size
        self.seq_len = manifest.trace_shape.seq_len
        trace_shape = (self.batch_size, self.seq_len)
        # Only shapes the build verified; "fixed" is the tutorial's single 8x128 shape.
        verified = set(manifest.verified_shapes) | {trace_shape}
        self.shapes = sorted(verified) if self.padding == "buckets" else [trace_shape]
        self.columns = sorted({c for _, c in self.shapes})
        try:
            self.spec = InputSpec(tuple(manifest.input_names), manifest.tokenizer.pad_id)
        except ValueError as exc:
            raise ArtifactError(f"{artifact_dir}: {exc}: rebuild the artifact") from exc
        try:
            self.encoder = PairEncoder(artifact_dir / manifest.tokenizer.file, manifest.tokenizer.max_length)
        except Exception as exc:  # the tokenizers library raises its own Exception for a malformed file
            raise ArtifactError(f"cannot read {artifact_dir / manifest.tokenizer.file}: {str(exc).splitlines()[0]}") from exc

    @classmethod
    def load(cls, artifact_dir: Path, *, padding: Padding = "auto", workers: int = 1, threads: int = 1) -> Runtime:
        """Verify the manifest and sha256, then load the model on its engine, on the CPU.

        `workers`, `threads`: how many batches will run at once and on how many threads each (OpenVINO compiles its
        streams for them; TorchScript's threads are process-wide, see `configure_process`). Changes nothing
        process-wide: threads, the quantized engine, the graph executor and the allocator are `configure_process`'s,
        called once at start, before any load (int8 weights are repacked for the engine active when loaded).
        """
        verified = read_artifact(artifact_dir)
        manifest = verified.manifest
        check_runnable(manifest)
        files = ModelFiles(manifest.model_file, verified.contents)
        engine = load_engine(manifest, files, streams=workers, threads=threads)
        log.info(
            "loaded %s (%s on %s, %d bytes, sha256 %s)",
            manifest.name, manifest.variant, engine.name, manifest.size_bytes, manifest.model_sha256[:12],
        )  # fmt: skip
        if manifest.source.random_init:
            log.warning("%s was built from a random checkpoint (init-tiny): its answers are random, not a paraphrase model", manifest.name)
        return cls(artifact_dir, manifest, engine, padding)

    @property
    def variant(self) -> str:
        return str(self.manifest.variant)

    @property
    def engine_name(self) -> str:
        return self.engine.name

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def sha256(self) -> str:
        return self.manifest.model_sha256

    @property
    def model_bytes(self) -> int:
        """The model on disk (model file and weights)."""
        return self.manifest.size_bytes

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
        padded = pad_batch(rows, *self.shape_for(rows), self.spec)
        started = time.perf_counter()
        logits = self._logits(padded)
        seconds = time.perf_counter() - started
        real = logits[: padded.rows]
        scores = paraphrase_scores(real)
        if len(scores) != len(rows):
            raise RuntimeError(f"model returned {len(scores)} scores for {len(rows)} rows")
        return BatchResult(scores, padded, seconds, [(float(a), float(b)) for a, b in real.float().tolist()])

    def _logits(self, padded: PaddedBatch) -> torch.Tensor:
        return self.engine.logits(padded)

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
                self._logits(pad_batch([row] * n_rows, n_rows, cols, self.spec))

    def time_forward(self, rows: int = 8, cols: int = 64, runs: int = 7) -> float:
        """Median seconds of one forward at rows x cols (after a warm-up of that shape): how `auto` compares engines.

        8 x 64 is a full batch at the length bucket most MRPC traffic pads to: what the service runs under load.
        """
        words = " ".join(["word"] * (cols // 2 - 2))  # two sentences of cols/2 - 2 tokens: cols - 1 with [CLS] and [SEP]s
        row = self.encode([(words, words)])[0]
        batch = pad_batch([row] * rows, rows, max(cols, len(row)), self.spec)
        times = []
        for _ in range(runs + 2):
            started = time.perf_counter()
            self._logits(batch)
            times.append(time.perf_counter() - started)
        return sorted(times[2:])[len(times[2:]) // 2]


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
