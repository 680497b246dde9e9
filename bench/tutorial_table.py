"""The tutorial's speed and size table at bert-base geometry (12 layers, 768 wide), measured here, side by side.

Random weights: speed and size do not depend on weight values. One 8x128 batch, median of --runs after warm-up,
at 1 and 2 threads: fp32 traced vs graph-mode int8 (quantize_dynamic_jit) vs eager-mode int8 (quantize_dynamic).

    python -m bench.tutorial_table [--runs 10] [--json bench-out/tutorial_table.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from artifact.encoding import PaddedBatch
from artifact.kernels import cpu_description
from artifact.quiet import deprecations_silenced
from model_build.build import op_counts, quantize_eager_int8, quantize_int8, trace
from model_build.evaluate import TUTORIAL as TUTORIAL_MRPC
from model_build.progress import progress

TUTORIAL = {
    "size_mb": {name: row["size_mb"] for name, row in TUTORIAL_MRPC.items() if "size_mb" in row},
    "seconds_1_thread": {name: row["seconds_per_batch"] for name, row in TUTORIAL_MRPC.items()},
}


def example_batch(vocab_size: int, batch: int = 8, seq: int = 128) -> PaddedBatch:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab_size, (batch, seq), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    types[:, seq // 2 :] = 1
    return PaddedBatch(ids, mask, types, batch, batch * seq)


def saved_bytes(module: torch.jit.ScriptModule) -> int:
    with tempfile.TemporaryDirectory() as folder, deprecations_silenced():
        path = Path(folder) / "m.pt"
        torch.jit.save(module, str(path))
        return path.stat().st_size


def median_seconds(module: torch.jit.ScriptModule, batch: PaddedBatch, runs: int, bar: Any) -> tuple[float, list[float]]:
    times = []
    with torch.inference_mode():
        for _ in range(2):
            module(*batch.args())
        for _ in range(runs):
            started = time.perf_counter()
            module(*batch.args())
            times.append(time.perf_counter() - started)
            bar.update(1)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per variant and thread count (median reported)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=Path("bench-out/tutorial_table.json"))
    args = parser.parse_args(argv)

    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    # bert-base defaults: 12 layers, 768 hidden, 3072 intermediate; eager attention, as the build traces it.
    config = BertConfig(num_labels=2, return_dict=False, attn_implementation="eager")
    model = BertForSequenceClassification(config).eval()
    batch = example_batch(config.vocab_size)
    torch.set_num_threads(1)
    traced = trace(model, batch)
    modules = {"fp32": traced, "int8": quantize_int8(traced), "eager-int8": quantize_eager_int8(model, batch)}
    sizes = {name: saved_bytes(m) for name, m in modules.items()}
    quantized_linears = {name: op_counts(m).get("quantized::linear_dynamic", 0) for name, m in modules.items()}

    timings: dict[str, dict[str, Any]] = {}
    with progress(total=len(args.threads) * len(modules) * args.runs, desc="bench", unit="run") as bar:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, module in modules.items():
                median, times = median_seconds(module, batch, args.runs, bar)
                timings.setdefault(str(threads), {})[name] = {"median_s": median, "runs_s": times}

    result = {
        "geometry": {"layers": config.num_hidden_layers, "hidden": config.hidden_size, "batch": 8, "seq_len": 128},
        "size_bytes": sizes,
        "quantized_linear_ops": quantized_linears,
        "timings": timings,
        "ratios": {
            "int8_speedup_1_thread": timings["1"]["fp32"]["median_s"] / timings["1"]["int8"]["median_s"] if "1" in timings else None,
            "int8_size_fraction": sizes["int8"] / sizes["fp32"],
        },
        "tutorial": TUTORIAL,
        "cpu": cpu_description(),
        "torch_version": torch.__version__,
        "quantized_engine": torch.backends.quantized.engine,
        "runs": args.runs,
    }
    cpu = result["cpu"]
    print(f"\nbert-base geometry, one 8x128 batch, median of {args.runs} runs (torch {torch.__version__})")
    print(f"CPU: {cpu['cpu_model']} [{cpu['simd_flags']}], int8 kernel {cpu['int8_kernel']}")
    print(
        f"{'':12s} {'size MB':>8s} {'tutorial':>9s}" + "".join(f" {f'{t} thr s':>9s}" for t in args.threads) + f" {'tutorial 1 thr':>15s}"
    )
    for name in modules:
        tut_size = TUTORIAL["size_mb"].get(name)
        tut_time = TUTORIAL["seconds_1_thread"].get(name)
        cells = "".join(f" {timings[str(t)][name]['median_s']:9.3f}" for t in args.threads)
        print(f"{name:12s} {sizes[name] / 1e6:8.1f} {tut_size or float('nan'):9.0f}{cells} {tut_time or float('nan'):15.2f}")
    ratios = result["ratios"]
    print(f"\nint8 speed-up at 1 thread: {ratios['int8_speedup_1_thread']:.2f}x (tutorial 1.67x; target >= 1.7x)")
    print(f"int8 size / fp32 size:     {ratios['int8_size_fraction']:.3f} (tutorial 0.42; target <= 0.43)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
