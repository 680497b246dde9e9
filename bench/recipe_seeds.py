"""The chosen recipe's variance over seeds: cross-validated F1 (from search runs) and dev F1 of full-train models.

Each seed trains on all of MRPC train (`finetune`, dev scored once at the end); its cross-validated F1 is the mean over
folds of the `python -m model_build search` runs with that seed, read from the search JSON files given. A seed whose
checkpoint already exists with the same recipe is reused, so an interrupted run resumes.

    python -m model_build search --data-dir ../shared/data/mrpc --candidate swap-5e-5 --seed 43 --seed 44 --json bench-out/search-seeds.json
    python -m bench.recipe_seeds --data-dir ../shared/data/mrpc --search-json bench-out/search.json \\
        --search-json bench-out/search-seeds.json [--seed 42 --seed 43 --seed 44] [--out-dir model-cache/seeds]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import transformers

from artifact.kernels import cpu_description
from model_build.finetune import FinetuneConfig, finetune, trained_with
from model_build.recipes import DEFAULT_RECIPE, DEFAULT_SEED, recipe
from model_build.search import mean_std


def cv_by_seed(search_files: list[Path], candidate: str, epoch: int) -> dict[int, list[float]]:
    """Held-out F1 of every fold, by seed, for one candidate after one epoch."""
    folds: dict[int, list[float]] = {}
    for path in search_files:
        for run in json.loads(path.read_text())["runs"]:
            if run["candidate"] == candidate:
                f1 = next(e["f1"] for e in run["epochs"] if e["epoch"] == epoch)
                folds.setdefault(run["seed"], []).append(f1)
    return folds


def mean_std_text(values: list[float]) -> str:
    figures = mean_std(values)
    return f"{figures['mean']:.4f} ± {figures['std']:.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--search-json", type=Path, action="append", required=True, help="search results to read CV figures from")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"(default: {DEFAULT_RECIPE}, the default model's)")
    parser.add_argument("--seed", type=int, action="append", help=f"repeat (default: {DEFAULT_SEED}, 43, 44)")
    parser.add_argument("--out-dir", type=Path, default=Path("model-cache/seeds"))
    parser.add_argument("--json", type=Path, default=Path("bench-out/recipe_seeds.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_error()  # not the "newly initialized classifier" report for every seed

    chosen = json.loads(args.search_json[0].read_text())["chosen"]
    wanted = recipe(args.recipe)
    if chosen["recipe"] != asdict(wanted):  # Augmentation is a StrEnum: equal to the JSON's string
        print(f"note: {args.recipe} is not the recipe {args.search_json[0]} chose ({chosen['recipe']})", file=sys.stderr)
    seeds = args.seed or [DEFAULT_SEED, 43, 44]
    folds = cv_by_seed(args.search_json, chosen["candidate"], chosen["epoch"])
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        out = args.out_dir / f"{args.recipe}-seed-{seed}"
        if not trained_with(out, wanted, seed):
            finetune(args.data_dir, out, config=FinetuneConfig(wanted, seed), force=True)
        report = json.loads((out / "training.json").read_text())
        cv = folds.get(seed)
        rows.append(
            {
                "seed": seed,
                "cv_f1": statistics.fmean(cv) if cv else None,
                "cv_folds": cv,
                "dev_f1": report["dev_f1"],
                "dev_accuracy": report["dev_accuracy"],
                "train_seconds": report["seconds"],
                "checkpoint": str(out),
            }
        )
    print(f"recipe {args.recipe}: {json.dumps(asdict(wanted))}")
    print(f"{'seed':>6s} {'CV F1 (fold mean)':>18s} {'dev F1':>8s} {'dev acc':>8s} {'train s':>8s}")
    for r in rows:
        cv_text = f"{r['cv_f1']:.4f}" if r["cv_f1"] is not None else "—"
        print(f"{r['seed']:>6d} {cv_text:>18s} {r['dev_f1']:8.4f} {r['dev_accuracy']:8.4f} {r['train_seconds']:8.0f}")
    cv_values = [r["cv_f1"] for r in rows if r["cv_f1"] is not None]
    summary = {
        "cv_f1": mean_std_text(cv_values) if cv_values else None,
        "dev_f1": mean_std_text([r["dev_f1"] for r in rows]),
        "dev_accuracy": mean_std_text([r["dev_accuracy"] for r in rows]),
    }
    print(f"{'mean ± std':>6s} {summary['cv_f1'] or '—':>18s}  dev F1 {summary['dev_f1']}, accuracy {summary['dev_accuracy']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"recipe": args.recipe, "recipe_fields": asdict(wanted), "seeds": rows, "summary": summary, "cpu": cpu_description()}
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
