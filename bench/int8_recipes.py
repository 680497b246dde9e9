"""Which int8 recipe keeps a fine-tuned checkpoint's answers: each candidate built in memory from the same checkpoint
and scored on MRPC dev and on train (a seeded sample), beside the fp32 model, as the service feeds it (dynamic int8 at
the fixed 8x128 shape its scores depend on; batch-invariant recipes in length-sorted batches of 8).

Candidates: the eager per-tensor dynamic int8, the tutorial's graph-mode per-channel dynamic int8, the same with each
layer's feed-forward output projection kept fp32, int8-calibrated (fixed activation ranges, 7-bit weights), and
OpenVINO int8 by NNCF (transformer preset, SmoothQuant), with and without those projections in fp32. Train is the
split the choice may be made on; dev is reported. Prints a table and writes JSON with the CPU.

    python -m bench.int8_recipes --model-dir model-cache/mpnet-base/checkpoint --data-dir ../shared/data/mrpc
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from artifact.encoding import PairEncoder, pad_batch, paraphrase_scores
from artifact.kernels import cpu_description
from model_build import calibration, openvino_build
from model_build.build import linear_execution_order, quantize_eager_int8, quantize_int8, trace
from model_build.checkpoint import Checkpoint, load_for_tracing
from model_build.mrpc import load_split
from model_build.scoring import f1_accuracy


def batches(encoder: PairEncoder, ckpt: Checkpoint, pairs: Sequence[Any], fixed: bool) -> tuple[list[Any], list[int]]:
    rows = encoder.encode([(p.sentence1, p.sentence2) for p in pairs])
    order = list(range(len(rows))) if fixed else sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = []
    for start in range(0, len(order), 8):
        chunk = order[start : start + 8]
        cols = 128 if fixed else max(16, -(-max(len(rows[i]) for i in chunk) // 16) * 16)
        out.append((chunk, pad_batch([rows[i] for i in chunk], 8 if fixed else len(chunk), cols, ckpt.spec)))
    return out, [p.label for p in pairs]


def score(
    module: Callable[..., Any], encoder: PairEncoder, ckpt: Checkpoint, pairs: Sequence[Any], fixed: bool
) -> tuple[dict[str, float], float]:
    prepared, labels = batches(encoder, ckpt, pairs, fixed)
    scores = [0.0] * len(labels)
    started = time.perf_counter()
    with torch.inference_mode():
        for chunk, batch in prepared:
            logits = module(*batch.args())[0][: len(chunk)]
            for i, s in zip(chunk, paraphrase_scores(logits), strict=True):
                scores[i] = s
    seconds = time.perf_counter() - started
    return f1_accuracy(labels, [int(s >= 0.5) for s in scores]), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--train-sample", type=int, default=1500, help="train pairs scored (seeded sample; the whole split is 3,668)")
    parser.add_argument("--calibration-pairs", type=int, default=512)
    parser.add_argument("--only", action="append", help="candidate names to run (default: all)")
    parser.add_argument("--json", type=Path, default=Path("bench-out/int8_recipes.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt = load_for_tracing(args.model_dir)
    tokenizer_dir = Path("bench-out/int8_recipes_tokenizer")
    ckpt.tokenizer.save_pretrained(str(tokenizer_dir))
    encoder = PairEncoder(tokenizer_dir / "tokenizer.json", 128)
    dev = load_split(args.data_dir, "dev")
    train = random.Random(1).sample(load_split(args.data_dir, "train"), args.train_sample)
    example_rows = encoder.encode([(dev[0].sentence1, dev[0].sentence2)] * 8)
    example = pad_batch(example_rows, 8, 128, ckpt.spec)
    traced = trace(ckpt.model, example)
    layers = linear_execution_order(ckpt.model, example)
    ffn = ckpt.family.ffn_outputs(layers)
    calib_rows = calibration.calibration_rows(args.data_dir, encoder, args.calibration_pairs)

    def calibrated(float_layers: Sequence[str]) -> Any:
        kept = [name for name in layers if name not in float_layers]
        observed = calibration.observe_ranges(ckpt.model, calib_rows, kept, ckpt.spec)
        ranges = calibration.activation_ranges(observed, kept, 8)
        return calibration.fix_activation_ranges(quantize_int8(traced, weight_bits=7, float_layers=float_layers), ranges)

    candidates: dict[str, tuple[Callable[[], Any], bool]] = {
        "fp32": (lambda: traced, False),
        "dynamic per-tensor (eager quantize_dynamic)": (lambda: quantize_eager_int8(ckpt.model, example), True),
        "dynamic per-channel (tutorial, graph mode)": (lambda: quantize_int8(traced), True),
        "dynamic per-channel, FFN output fp32": (lambda: quantize_int8(traced, float_layers=ffn), True),
        "int8-calibrated (fixed ranges, 7-bit weights)": (lambda: calibrated(()), False),
        "int8-calibrated, FFN output fp32": (lambda: calibrated(ffn), False),
        "openvino-int8 (NNCF, transformer preset)": (lambda: openvino_build.quantize(ckpt.model, example, calib_rows), False),
        "openvino-int8, FFN output fp32": (lambda: openvino_build.quantize(ckpt.model, example, calib_rows, ffn), False),
    }
    results: dict[str, Any] = {}
    print(f"{'recipe':48s} {'dev F1':>7s} {'dev acc':>7s} {'train F1':>8s} {'train acc':>9s} {'s/batch':>8s}", flush=True)
    for name, (make, fixed) in candidates.items():
        if args.only and name not in args.only and name.split(" ")[0] not in args.only:
            continue
        started = time.perf_counter()
        module = make()
        built = time.perf_counter() - started
        dev_figures, dev_seconds = score(module, encoder, ckpt, dev, fixed)
        train_figures, _ = score(module, encoder, ckpt, train, fixed)
        per_batch = dev_seconds / -(-len(dev) // 8)
        results[name] = {
            "dev": dev_figures,
            "train_sample": train_figures,
            "s_per_dev_batch": per_batch,
            "build_s": built,
            "fixed_8x128": fixed,
        }
        d, t = dev_figures, train_figures
        print(f"{name:48s} {d['f1']:7.4f} {d['accuracy']:7.4f} {t['f1']:8.4f} {t['accuracy']:9.4f} {per_batch:8.3f}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"results": results, "train_sample": len(train), "ffn_output_layers": ffn, "cpu": cpu_description()}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
