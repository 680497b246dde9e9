"""Load a verified artifact and score batches of sentence pairs with it; knows nothing of HTTP."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model_build.artifact import verify_artifact
from model_build.encoding import EncodedPair, PaddedBatch, PairEncoder, pad_batch, paraphrase_scores
from model_build.quiet import deprecations_silenced

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """Scores of the real rows of one forward pass, and what it cost."""

    scores: list[float]
    padded: PaddedBatch


class Runtime:
    """A TorchScript paraphrase classifier at a fixed trace shape, with its tokenizer."""

    def __init__(self, artifact_dir: Path, manifest: dict[str, Any], module: torch.jit.ScriptModule) -> None:
        self.artifact_dir = artifact_dir
        self.manifest = manifest
        self.module = module
        self.batch_size: int = manifest["trace_shape"]["batch_size"]
        self.seq_len: int = manifest["trace_shape"]["seq_len"]
        tokenizer = manifest["tokenizer"]
        self.encoder = PairEncoder(artifact_dir / tokenizer["file"], int(tokenizer["max_length"]))

    @classmethod
    def load(cls, artifact_dir: Path, *, threads: int = 1) -> Runtime:
        """Verify the manifest and sha256, then load model.pt on the CPU with `threads` intra-op threads."""
        manifest = verify_artifact(artifact_dir)
        torch.set_num_threads(threads)
        with deprecations_silenced():
            module = torch.jit.load(str(artifact_dir / manifest["model_file"]), map_location="cpu")
        module.eval()
        log.info(
            "loaded %s (%s, %d bytes, sha256 %s)",
            manifest["name"],
            manifest["variant"],
            manifest["model_bytes"],
            manifest["model_sha256"][:12],
        )
        return cls(artifact_dir, manifest, module)

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

    def forward(self, rows: Sequence[EncodedPair]) -> BatchResult:
        """Run up to batch_size rows padded to the trace shape; return P(paraphrase) per real row."""
        padded = pad_batch(rows, self.batch_size, self.seq_len)
        with torch.inference_mode():
            logits = self.module(*padded.args())[0]
        scores = paraphrase_scores(logits[: padded.rows])
        if len(scores) != len(rows):
            raise RuntimeError(f"model returned {len(scores)} scores for {len(rows)} rows")
        return BatchResult(scores, padded)

    def predict(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Score any number of pairs in trace-shape batches, in order (offline use: evaluation, checks)."""
        rows = self.encode(pairs)
        scores: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            scores += self.forward(rows[start : start + self.batch_size]).scores
        return scores

    def warm_up(self, rounds: int = 2) -> None:
        """Run full trace-shape batches so the first request does not pay for lazy initialisation."""
        row = self.encode([("warm up", "warming up")])[0]
        for _ in range(rounds):
            self.forward([row] * self.batch_size)
