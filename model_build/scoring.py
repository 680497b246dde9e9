"""Binary classification figures, as GLUE reports them for MRPC (positive class = paraphrase)."""

from __future__ import annotations

from collections.abc import Sequence


def f1_accuracy(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Return F1 of the positive class and accuracy; F1 is 0.0 when there is no true positive."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    if not labels:
        raise ValueError("no examples")
    tp = sum(1 for y, p in zip(labels, predictions, strict=False) if y == 1 and p == 1)
    fp = sum(1 for y, p in zip(labels, predictions, strict=False) if y == 0 and p == 1)
    fn = sum(1 for y, p in zip(labels, predictions, strict=False) if y == 1 and p == 0)
    correct = sum(1 for y, p in zip(labels, predictions, strict=False) if y == p)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"f1": f1, "accuracy": correct / len(labels)}
