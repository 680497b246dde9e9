"""Which int8 widths make int8-calibrated run, with the same answers, on every x86-64 CPU: measured side by side.

Builds int8-calibrated at each candidate (weight bits x activation bits) from one checkpoint, plus fp32 and dynamic
int8 for reference, then evaluates every artifact on MRPC dev at the tutorial's 8x128 on both int8 kernel paths:
this CPU's own and fbgemm's AVX2 kernels (FBGEMM_ENABLE_INSTRUCTIONS=AVX2, in a subprocess). 8 x 8 bits is only
built and run where the kernel is exact (VNNI); on AVX2 it is reported as not runnable.

    python bench/int8_widths.py --model-dir model-cache/default/checkpoint --data-dir ../shared/data/mrpc \\
        [--out bench-out/int8-widths] [--json bench-out/int8_widths.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from artifact.kernels import cpu_description, exact_on_saturating_kernels, int8_kernel_exact
from artifact.manifest import Variant
from model_build.build import BuildOptions, build
from model_build.errors import BuildError

# (label, weight bits, activation bits)
CANDIDATES = (("w8 a8", 8, 8), ("w7 a8", 7, 8), ("w8 a7", 8, 7))


def evaluate(artifact: Path, data_dir: Path, **env: str) -> dict[str, Any] | None:
    """`python -m model_build evaluate` in a fresh process (the fbgemm ISA is chosen once per process); None when
    the artifact refuses to run on that kernel path."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        result = subprocess.run(
            [sys.executable, "-m", "model_build", "--log-level", "WARNING", "evaluate", "--artifact", str(artifact),
             "--data-dir", str(data_dir), "--json", str(out)],
            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if result.returncode == 2 and "cannot run here" in result.stderr:
            print(f"{artifact}: {result.stderr.strip().splitlines()[-1]}")
            return None
        result.check_returncode()
        return json.loads(out.read_text())[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("bench-out/int8-widths"))
    parser.add_argument("--json", type=Path, default=Path("bench-out/int8_widths.json"))
    args = parser.parse_args()

    artifacts: dict[str, Path] = {}
    refused: dict[str, str] = {}
    reference = args.out / "reference"
    if not (reference / "int8" / "manifest.json").is_file():
        build(args.model_dir, reference, BuildOptions(variants=(Variant.FP32, Variant.INT8), force=True))
    artifacts["fp32"], artifacts["int8 (dynamic)"] = reference / "fp32", reference / "int8"
    for label, weight_bits, activation_bits in CANDIDATES:
        if not exact_on_saturating_kernels(activation_bits, weight_bits) and not int8_kernel_exact():
            print(f"{label}: not buildable or runnable on this CPU's int8 kernel (saturating int16 pair sums)")
            continue
        folder = args.out / label.replace(" ", "-")
        if not (folder / "int8-calibrated" / "manifest.json").is_file():
            opts = BuildOptions(
                variants=(Variant.INT8_CALIBRATED,),
                calibration_data=args.data_dir,
                weight_bits=weight_bits,
                activation_bits=activation_bits,
                force=True,
            )
            try:
                build(args.model_dir, folder, opts)
            except BuildError as exc:  # the build verifies what it makes: a width this CPU computes inexactly is refused
                print(f"{label}: refused by the build on this CPU: {exc}")
                refused[label] = str(exc)
                continue
        artifacts[f"int8-calibrated {label}"] = folder / "int8-calibrated"

    native = int8_kernel_exact()
    rows = []
    fp32_scores: list[float] = []
    for name, folder in artifacts.items():
        here = evaluate(folder, args.data_dir)
        avx2 = evaluate(folder, args.data_dir, FBGEMM_ENABLE_INSTRUCTIONS="AVX2")
        assert here is not None, f"{folder} was built here, so it runs here"
        fp32_scores = fp32_scores or here["scores"]
        unlike = sum((a >= 0.5) != (b >= 0.5) for a, b in zip(here["scores"], fp32_scores, strict=True))
        rows.append(
            {
                "artifact": name,
                "f1": here["f1"],
                "accuracy": here["accuracy"],
                "labels_unlike_fp32": unlike,
                "max_abs_score_diff_vs_fp32": max(abs(a - b) for a, b in zip(here["scores"], fp32_scores, strict=True)),
                "seconds_per_batch": here["seconds_per_batch"],
                "avx2_runs": avx2 is not None,
                "avx2_f1": avx2 and avx2["f1"],
                "avx2_seconds_per_batch": avx2 and avx2["seconds_per_batch"],
                "identical_on_both_paths": avx2 is not None and here["scores"] == avx2["scores"],
                "max_abs_score_diff_between_paths": avx2 and max(abs(a - b) for a, b in zip(here["scores"], avx2["scores"], strict=True)),
                "model_bytes": here["model_bytes"],
            }
        )
    cpu = cpu_description()
    native_name = "vnni" if native else "avx2"
    print(f"\nMRPC dev ({len(fp32_scores)} pairs), 8x128 batches, 1 thread. CPU: {cpu['cpu_model']} [{cpu['simd_flags']}]")
    head = f"{'artifact':28s} {'F1':>7s} {'acc':>7s} {'unlike fp32':>11s} {'s/batch ' + native_name:>15s} {'s/batch avx2':>13s}"
    head += f" {'same scores':>12s}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        if not r["avx2_runs"]:
            same, avx2_time = "refused", "refused"
        else:
            same = "yes" if r["identical_on_both_paths"] else f"no ({r['max_abs_score_diff_between_paths']:.2g})"
            avx2_time = f"{r['avx2_seconds_per_batch']:.3f}"
        print(
            f"{r['artifact']:28s} {r['f1']:7.4f} {r['accuracy']:7.4f} {r['labels_unlike_fp32']:11d} "
            f"{r['seconds_per_batch']:15.3f} {avx2_time:>13s} {same:>12s}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {"cpu": cpu, "native_int8_kernel": native_name, "rows": rows, "refused_by_the_build": refused}
    args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
