"""Pair tokenization, padding, and turning logits into answers: shared by the build checks, the evaluator and the service.

Uses the `tokenizers` library directly on the artifact's tokenizer.json, so serving needs no transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

LABELS = ("not_paraphrase", "paraphrase")  # logit index 1 = paraphrase, as in GLUE MRPC
TRACE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the traced forward's argument order
DECISION_THRESHOLD = 0.5  # P(paraphrase) at or above it is labelled paraphrase


def label_for(score: float, threshold: float = DECISION_THRESHOLD) -> str:
    """The label of a P(paraphrase) score."""
    return LABELS[1] if score >= threshold else LABELS[0]


@dataclass(frozen=True)
class EncodedPair:
    """Token ids and segment ids of one `[CLS] a [SEP] b [SEP]` row, unpadded."""

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)


class PairEncoder:
    """A fast tokenizer set to `longest_first` truncation at `max_length`, without padding."""

    def __init__(self, tokenizer_file: Path, max_length: int) -> None:
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[EncodedPair]:
        """Tokenize each (sentence1, sentence2) as one pair row."""
        encodings = self._tokenizer.encode_batch(list(pairs))
        return [EncodedPair(tuple(e.ids), tuple(e.type_ids)) for e in encodings]


@dataclass(frozen=True)
class PaddedBatch:
    """Model inputs in the trace's argument order (input_ids, attention_mask, token_type_ids)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    rows: int  # real rows; the rest is padding
    real_tokens: int

    def args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The positional arguments of the traced module, in its forward signature's order."""
        return (self.input_ids, self.attention_mask, self.token_type_ids)

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.numel())


def pad_batch(rows: Sequence[EncodedPair], batch_size: int, seq_len: int) -> PaddedBatch:
    """Pad rows and columns with zeros (the [PAD] id, masked out) to exactly batch_size x seq_len."""
    if not 0 < len(rows) <= batch_size:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {batch_size}")
    ids = torch.zeros((batch_size, seq_len), dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    real = 0
    for i, row in enumerate(rows):
        n = len(row)
        if n > seq_len:
            raise ValueError(f"row {i} has {n} tokens; the shape holds {seq_len}")
        ids[i, :n] = torch.tensor(row.input_ids, dtype=torch.long)
        types[i, :n] = torch.tensor(row.token_type_ids, dtype=torch.long)
        mask[i, :n] = 1
        real += n
    return PaddedBatch(ids, mask, types, len(rows), real)


def paraphrase_scores(logits: torch.Tensor) -> list[float]:
    """P(paraphrase) per row: softmax over the two logits, index 1."""
    return torch.softmax(logits.float(), dim=-1)[:, 1].tolist()
