"""The forward alone, engine by engine and shape by shape: what the service's speed is made of.

Runs each runtime on real MRPC dev pairs padded to each shape (8x48, 8x64, 1x32, 1x64, 8x128), one thread, the
runtimes interleaved over `--rounds` rounds so drift hits them alike; reports median ms and the ratio to the
TorchScript int8-calibrated forward served before the second engine. Then each runtime's dev F1 (8 pairs at a time,
8x128), labels unlike fp32, and how far a pair's score moves between alone and inside a batch (from the build's own
check, recorded in the manifest). Writes JSON with the CPU.

    python -m bench.engines [--artifacts model-cache/default/artifacts] [--data-dir ../shared/data/mrpc] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from artifact.encoding import pad_batch
from artifact.engines import ModelFiles
from artifact.engines.openvino import OpenVINOEngine, missing, read
from artifact.kernels import cpu_description
from artifact.manifest import read_artifact
from artifact.runtime import Runtime, configure_process
from model_build.mrpc import load_split
from model_build.scoring import f1_accuracy

SHAPES = ((8, 48), (8, 64), (1, 32), (1, 64), (8, 128))


def runtimes(artifacts: Path) -> dict[str, Runtime]:
    """The rows of the table: each a Runtime at fixed 8x128 for scoring (shapes are padded by hand for timing)."""
    found = {
        "TorchScript int8-calibrated": Runtime.load(artifacts / "int8-calibrated", padding="fixed"),
        "TorchScript fp32": Runtime.load(artifacts / "fp32", padding="fixed"),
    }
    if missing() is None and (artifacts / "openvino-int8").is_dir():
        f32 = Runtime.load(artifacts / "openvino-int8", padding="fixed")
        found["OpenVINO int8, precision hint f32 (served)"] = f32
        bf16 = Runtime.load(artifacts / "openvino-int8", padding="fixed")
        verified = read_artifact(artifacts / "openvino-int8")
        files = ModelFiles(verified.manifest.model_file, verified.contents)
        bf16.engine = OpenVINOEngine(read(files), precision="bf16")
        found["OpenVINO int8, precision hint bf16 (OpenVINO's default on BF16 CPUs)"] = bf16
    return found


def time_shapes(found: dict[str, Runtime], pairs: list[tuple[str, str]], rounds: int, runs: int) -> dict[str, dict[str, float]]:
    """Median ms per forward at each shape, the runtimes interleaved round by round."""
    any_rt = next(iter(found.values()))
    rows = any_rt.encode(pairs[:64])
    batches = {}
    for n, cols in SHAPES:
        fitting = [r for r in rows if len(r) <= cols] or any_rt.encode([("a", "b")])
        batches[(n, cols)] = pad_batch([fitting[i % len(fitting)] for i in range(n)], n, cols, any_rt.spec)
    times: dict[str, dict[str, list[float]]] = {name: {f"{n}x{c}": [] for n, c in SHAPES} for name in found}
    for rt in found.values():  # warm every shape once
        for batch in batches.values():
            rt._logits(batch)
    for r in range(rounds):
        print(f"  round {r + 1}/{rounds}", flush=True)
        for name, rt in found.items():
            for (n, cols), batch in batches.items():
                samples = []
                for _ in range(runs):
                    started = time.perf_counter()
                    rt._logits(batch)
                    samples.append(time.perf_counter() - started)
                times[name][f"{n}x{cols}"].append(statistics.median(samples))
    return {name: {shape: statistics.median(v) * 1000 for shape, v in by.items()} for name, by in times.items()}


def scores(rt: Runtime, pairs: list[tuple[str, str]]) -> list[float]:
    return [s for result in rt.batches(rt.encode(pairs)) for s in result.scores]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("model-cache/default/artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/mrpc"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=9, help="forwards per shape per round (median)")
    parser.add_argument("--json", type=Path, default=Path("bench-out/engines_by_shape.json"))
    args = parser.parse_args(argv)
    configure_process(threads=1)
    dev = load_split(args.data_dir, "dev")
    pairs = [(p.sentence1, p.sentence2) for p in dev]
    labels = [p.label for p in dev]
    found = runtimes(args.artifacts)
    print(f"timing {len(found)} runtimes x {len(SHAPES)} shapes, {args.rounds} rounds", flush=True)
    ms = time_shapes(found, pairs, args.rounds, args.runs)
    base = ms["TorchScript int8-calibrated"]
    fp32_scores = scores(found["TorchScript fp32"], pairs)
    table: dict[str, Any] = {}
    for name, rt in found.items():
        got = fp32_scores if name == "TorchScript fp32" else scores(rt, pairs)
        figures = f1_accuracy(labels, [int(s >= 0.5) for s in got])
        invariance = rt.manifest.batch_invariance
        stability = rt.manifest.parity.get("label_stability", {})
        table[name] = {
            "ms": ms[name],
            "ratio_to_torchscript_int8_calibrated": {k: ms[name][k] / base[k] for k in base},
            "dev_f1": figures["f1"],
            "dev_accuracy": figures["accuracy"],
            "labels_unlike_fp32": sum((a >= 0.5) != (b >= 0.5) for a, b in zip(got, fp32_scores, strict=True)),
            "max_abs_logit_diff_alone_vs_batch": invariance.max_abs_logit_diff if invariance else None,
            "label_stability": stability,
        }
    shapes = [f"{n}x{c}" for n, c in SHAPES]
    cpu = cpu_description()
    print(f"\nCPU {cpu['cpu_model']} ({cpu['simd_flags']}), 1 thread, MRPC dev pairs; ms per forward, ratio to the first row")
    print(f"{'runtime':66s} " + " ".join(f"{s:>12s}" for s in shapes) + f" {'dev F1':>7s} {'unlike fp32':>11s}")
    for name, row in table.items():
        cells = " ".join(f"{row['ms'][s]:6.1f} ({row['ratio_to_torchscript_int8_calibrated'][s]:.2f})" for s in shapes)
        print(f"{name:66s} {cells} {row['dev_f1']:7.4f} {row['labels_unlike_fp32']:11d}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cpu": cpu, "torch": torch.__version__, "rounds": args.rounds, "table": table}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
