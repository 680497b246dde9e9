"""MRPC F1/accuracy, time and size of artifacts, fed exactly as the service feeds them (same tokenizer, same padding)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from artifact.encoding import label_for
from artifact.kernels import cpu_description
from artifact.runtime import Padding, Runtime
from model_build.mrpc import load_split
from model_build.progress import progress
from model_build.scoring import f1_accuracy

# The tutorial's published figures (bert-base, MRPC dev, 8x128 batches, one thread) for side-by-side reading.
TUTORIAL = {"fp32": {"f1": 0.901, "size_mb": 438}, "int8": {"f1": 0.902, "size_mb": 184}}


def evaluate_artifacts(
    artifact_dirs: Sequence[Path],
    data_dir: Path,
    *,
    split: str = "dev",
    limit: int | None = None,
    threads: int = 1,
    padding: Padding = "fixed",
) -> list[dict[str, Any]]:
    """Evaluate each artifact on one MRPC split, 8 pairs at a time in file order; one result row per artifact.

    `padding` defaults to the tutorial's fixed 8x128 so times compare across variants; "auto" is what the service does.
    """
    pairs = load_split(data_dir, split)[:limit]
    texts = [(p.sentence1, p.sentence2) for p in pairs]
    labels = [p.label for p in pairs]
    results = []
    for artifact_dir in artifact_dirs:
        runtime = Runtime.load(artifact_dir, threads=threads, padding=padding)
        runtime.warm_up(1)
        rows = runtime.encode(texts)
        scores: list[float] = []
        forward_seconds = 0.0
        n_batches = -(-len(rows) // runtime.batch_size)
        for result in progress(iterable=runtime.batches(rows), total=n_batches, desc=f"evaluate {runtime.variant}", unit="batch"):
            scores += result.scores
            forward_seconds += result.seconds
        figures = f1_accuracy(labels, [int(label_for(s) == "paraphrase") for s in scores])
        results.append(
            {
                "artifact": str(artifact_dir),
                "name": runtime.name,
                "variant": runtime.variant,
                "split": split,
                "pairs": len(pairs),
                "f1": figures["f1"],
                "accuracy": figures["accuracy"],
                "model_bytes": runtime.model_bytes,
                "batches": n_batches,
                "inference_seconds": forward_seconds,
                "seconds_per_batch": forward_seconds / n_batches,
                "threads": threads,
                "trace_shape": [runtime.batch_size, runtime.seq_len],
                "padding": runtime.padding,
                "scores": scores,
                "cpu": cpu_description(),
            }
        )
    return results


def render_table(results: Sequence[dict[str, Any]]) -> str:
    """The tutorial's comparison table, one row per artifact, with the tutorial's own figures beside."""
    head = (
        f"{'variant':15s} {'size MB':>8s} {'F1':>7s} {'acc':>7s} {'time s':>8s} {'s/batch':>8s}"
        f"  {'tutorial F1':>11s} {'tutorial MB':>11s}  artifact"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ref = TUTORIAL.get(r["variant"], {})
        lines.append(
            f"{r['variant']:15s} {r['model_bytes'] / 1e6:8.1f} {r['f1']:7.4f} {r['accuracy']:7.4f} {r['inference_seconds']:8.2f} "
            f"{r['seconds_per_batch']:8.3f}  {ref.get('f1', float('nan')):11.3f} {ref.get('size_mb', float('nan')):11.0f}  {r['artifact']}"
        )
    return "\n".join(lines)
