"""The protocol-neutral core of a request: what a valid pair is, and what an answer holds. No FastAPI, no HTTP.

Every protocol (paraserve's `/predict`, Open Inference Protocol v2 over REST and gRPC) only translates its wire
format into `(sentence1, sentence2)` pairs and a threshold, calls `PredictionService.score`, and renders `Scored`
or the domain error back in its own shape. The rules live here once, so the protocols cannot drift apart: the same
pair is refused by each with the same domain error (`InvalidPair`: which pair, which sentence, which limit).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from app.shared.errors import InvalidPair, Unauthorized, ValidationFailed
from artifact.encoding import DECISION_THRESHOLD, LABELS, label_for, visible_pattern

# Thresholds at the extremes label everything one way; these bounds keep the knob meaningful.
MIN_THRESHOLD, MAX_THRESHOLD = 0.01, 0.99
NO_TOKENS = "has no character the tokenizer keeps (only whitespace, control, zero-width or combining characters)"
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class PairLimits:
    """What one request may carry: the deployment's settings, the same for every protocol."""

    max_pairs: int
    max_chars: int


@cache
def _keeps_a_token() -> re.Pattern[str]:
    return re.compile(visible_pattern())


def validate_pairs(pairs: Sequence[tuple[Any, Any]], limits: PairLimits) -> list[tuple[str, str]]:
    """The pairs as strings, or the first problem as a domain error: how many pairs, which sentence breaks which limit.

    Checked before any tokenization, so a refused request costs no model or tokenizer time. A lone surrogate
    (JSON `"\\ud800"`) is not text: the tokenizer cannot encode it, so it is refused here as a client error.
    """
    if not 1 <= len(pairs) <= limits.max_pairs:
        raise ValidationFailed(count_problem(len(pairs), limits.max_pairs))
    keeps = _keeps_a_token()
    for index, pair in enumerate(pairs):
        for position, sentence in enumerate(pair):
            if not isinstance(sentence, str):
                raise InvalidPair(index, position, f"must be a string, not {type(sentence).__name__}")
            if not 1 <= len(sentence) <= limits.max_chars:
                raise InvalidPair(index, position, f"{len(sentence)} characters; 1 to {limits.max_chars} allowed")
            if _SURROGATE.search(sentence):
                raise InvalidPair(index, position, "is not valid Unicode text (it holds a lone surrogate code point)")
            if not keeps.search(sentence):
                raise InvalidPair(index, position, NO_TOKENS)
    return [(a, b) for a, b in pairs]


def count_problem(count: int, max_pairs: int) -> str:
    """How a request with the wrong number of pairs is told so, on every protocol."""
    return f"{count} pairs; 1 to {max_pairs} allowed per request"


def client_identity(named: str, peer: str) -> str:
    """Who asks, for fair admission, on every protocol: what a trusted proxy names (the first of a comma-separated
    list, at most 256 characters) when it names anyone, else the connection's peer address."""
    first = named.split(",")[0].strip()
    return first[:256] if first else peer


def validate_threshold(value: Any) -> float:
    """The decision threshold on P(paraphrase), MIN_THRESHOLD to MAX_THRESHOLD (a bool is not a number here)."""
    if value is None:
        return DECISION_THRESHOLD
    if isinstance(value, bool) or not isinstance(value, int | float) or not MIN_THRESHOLD <= value <= MAX_THRESHOLD:
        raise ValidationFailed(f"threshold must be a number from {MIN_THRESHOLD} to {MAX_THRESHOLD}, not {shown(value)}")
    return float(value)


def shown(value: Any, limit: int = 60) -> str:
    """A client's value quoted in an error message, cut to `limit` characters: an echo must not cost more than the input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ModelId:
    """Which artifact answers: its name, version (sha256 prefix), variant and engine."""

    name: str
    version: str
    variant: str
    sha256: str
    engine: str


@dataclass(frozen=True)
class PairResult:
    """One pair's answer."""

    label: str
    score: float  # P(paraphrase)
    logits: tuple[float, float] | None
    tokens: int  # special tokens included, after truncation
    truncated: bool
    decided_by: str = ""  # the model whose score this is (a cascade's fast or accurate stage)

    @property
    def probabilities(self) -> tuple[float, float]:
        """(not_paraphrase, paraphrase), in the order of LABELS."""
        return 1.0 - self.score, self.score


@dataclass(frozen=True)
class Scored:
    """One request's answers in order, the model that gave them and what the request waited for."""

    results: list[PairResult]
    model: ModelId
    queue_seconds: float
    inference_seconds: float


def results_for(
    scores: Sequence[float],
    logits: Sequence[tuple[float, float] | None],
    tokens: Sequence[int],
    truncated: Sequence[bool],
    threshold: float,
    decided_by: Sequence[str],
) -> list[PairResult]:
    """Label each pair's score by the threshold."""
    columns = zip(scores, logits, tokens, truncated, decided_by, strict=True)
    return [PairResult(label_for(s, threshold), s, lg, n, t, d) for s, lg, n, t, d in columns]


__all__ = ["LABELS", "MAX_THRESHOLD", "MIN_THRESHOLD", "ModelId", "PairLimits", "PairResult", "Scored", "validate_pairs"]


def require_api_key(key: bytes | None, authorization: str, how: str) -> None:
    """Unauthorized unless `authorization` is `Bearer <key>`, compared in constant time; anyone when no key is set.
    The same rule on every protocol; `how` says how the client's protocol carries the key."""
    if key is None:
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
        raise Unauthorized(f"missing or invalid API key: send {how}")
