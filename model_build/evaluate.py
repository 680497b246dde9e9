"""MRPC F1/accuracy, time and size of artifacts, fed exactly as the service feeds them (same tokenizer, same padding)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from artifact.encoding import label_for
from artifact.kernels import cpu_description
from artifact.runtime import Padding, Runtime, configure_process
from model_build.mrpc import load_split
from model_build.progress import progress
from model_build.scoring import f1_accuracy

# The tutorial's published figures (bert-base, MRPC dev, 8x128 batches, one thread) for side-by-side reading; its
# section 4 (eager-mode dynamic int8) gives only a time. bench/tutorial_table.py quotes the same figures.
TUTORIAL: dict[str, dict[str, float]] = {
    "fp32": {"f1": 0.901, "size_mb": 438, "seconds_per_batch": 4.49},
    "int8": {"f1": 0.902, "size_mb": 184, "seconds_per_batch": 2.69},
    "eager-int8": {"seconds_per_batch": 2.67},
}


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
    configure_process(threads=threads)
    for artifact_dir in artifact_dirs:
        runtime = Runtime.load(artifact_dir, padding=padding)
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
    """The tutorial's comparison table, one row per artifact, each figure with the tutorial's bert-base figure beside it."""

    def ours_and_tutorial(value: str, reference: float | None, fmt: str) -> str:
        return f"{value} ({'—' if reference is None else format(reference, fmt)})"

    columns = f"{'size MB (tutorial)':>18s} {'F1 (tutorial)':>16s} {'accuracy':>8s} {'s/batch (tutorial)':>18s} {'time s':>7s}"
    head = f"{'variant':15s} {columns}  artifact"
    lines = [head, "-" * len(head)]
    for r in results:
        # int8-calibrated is set beside the tutorial's only int8 model, its dynamic int8.
        ref = TUTORIAL.get("int8" if r["variant"] == "int8-calibrated" else r["variant"], {})
        size = ours_and_tutorial(f"{r['model_bytes'] / 1e6:.1f}", ref.get("size_mb"), ".0f")
        f1 = ours_and_tutorial(f"{r['f1']:.4f}", ref.get("f1"), ".3f")
        speed = ours_and_tutorial(f"{r['seconds_per_batch']:.3f}", ref.get("seconds_per_batch"), ".2f")
        figures = f"{size:>18s} {f1:>16s} {r['accuracy']:8.4f} {speed:>18s} {r['inference_seconds']:7.2f}"
        lines.append(f"{r['variant']:15s} {figures}  {r['artifact']}")
    lines.append("(in brackets: the tutorial's bert-base on MRPC dev, 8x128 batches, one thread; accuracy it does not give)")
    return "\n".join(lines)
