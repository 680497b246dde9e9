"""The fast model, the accurate one and the cascade over them, served side by side by one server (2 workers): pairs/s
and p50/p99 at 16 clients of 1-8 MRPC dev pairs, dev F1 and its gap to the accurate model's (with a 90% paired
bootstrap interval: 408 pairs make a 1-point gap uncertain) and the share of pairs escalated; then the curve of F1
against share escalated, with pairs/s, for symmetric bands around 0.5 (PARASERVE_CASCADE_BAND) and the chosen one.
Each row also gives each model's pairs per batch and forward milliseconds per pair under that load, and the workers'
busy share: where a cascade's pairs/s goes; and, from the two models' dev scores, the best any band could do on dev
(a bound). Prints tables and writes JSON with the CPU. Dev is reported, never used to choose (the band comes from
train).

    python -m bench.cascade --fast model-cache/default/artifacts --accurate model-cache/mpnet-base/artifacts \\
        --cascade model-cache/cascade --data-dir ../shared/data/mrpc [--seconds 20] [--curve]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from artifact.cascade import read_cascade
from artifact.kernels import cpu_description
from bench.service import idle_latency
from model_build.cascade import AtMostShare, answers, bands, outcome
from model_build.mrpc import load_split
from model_build.scoring import f1_accuracy, f1_gap_interval
from tests.harness.load import closed_loop, mixed, predict_sender
from tests.harness.scrape import Samples, metric_delta, samples
from tests.harness.server import running_server

WORKERS = 2
BOUND_SHARES = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)  # shares escalated at which dev_bound reports the best band
STAGES = ("fast", "accurate")


def dev_scores(url: str, model: str, dev: list[Any]) -> tuple[list[float], list[str]]:
    """Each dev pair's score as served (8 pairs a request) and the model that decided it."""
    scores, decided = [], []
    with httpx.Client(timeout=120) as client:
        for start in range(0, len(dev), 8):
            chunk = dev[start : start + 8]
            body = {"model": model, "pairs": [{"sentence1": p.sentence1, "sentence2": p.sentence2} for p in chunk]}
            answer = client.post(f"{url}/predict", json=body)
            answer.raise_for_status()
            for p in answer.json()["predictions"]:
                scores.append(p["score"])
                decided.append(p["decided_by"])
    return scores, decided


def dev_figures(scores: list[float], decided: list[str], dev: list[Any]) -> dict[str, float]:
    """Dev F1 and accuracy, and the share of pairs the accurate model decided."""
    figures = f1_accuracy([p.label for p in dev], answers(scores))
    return {**figures, "escalated": sum(1 for d in decided if d == "accurate") / len(decided)}


def gap_to_accurate(scores: list[float], accurate: list[float], dev: list[Any]) -> dict[str, Any]:
    """Dev F1 minus the accurate model's, and its 90% paired-bootstrap interval: how sure a gap on 408 pairs is."""
    labels = [p.label for p in dev]
    ours, theirs = answers(scores), answers(accurate)
    gap = f1_accuracy(labels, ours)["f1"] - f1_accuracy(labels, theirs)["f1"]
    return {"f1_gap": gap, "f1_gap_90": list(f1_gap_interval(labels, ours, theirs))}


def dev_bound(fast: list[float], accurate: list[float], dev: list[Any]) -> dict[str, Any]:
    """What no band chosen on train can beat on dev: where the two models disagree, and the best F1 of any band read
    off dev itself at each share escalated (a bound, never a choice)."""
    labels = [p.label for p in dev]
    disagree = [f for f, x, y in zip(fast, answers(fast), answers(accurate), strict=True) if x != y]
    outcomes = [outcome(low, high, fast, accurate, labels) for low, high in bands()]
    accurate_f1 = f1_accuracy(labels, answers(accurate))["f1"]
    best = {share: AtMostShare(share).pick(outcomes, accurate_f1) for share in BOUND_SHARES}
    return {
        "disagree": len(disagree) / len(dev),
        "disagree_fast_above_0_85": sum(1 for f in disagree if f >= 0.85) / max(1, len(disagree)),
        "best_band_at_share": [{"share": share, **asdict(o)} for share, o in best.items() if o is not None],
    }


def render_bound(bound: dict[str, Any]) -> str:
    lines = [
        f"\nfast and accurate disagree on {bound['disagree']:.1%} of dev, {bound['disagree_fast_above_0_85']:.0%} of those with a fast "
        "score >= 0.85; the best band read off dev (a bound, not a choice) at each share escalated:"
    ]
    lines += [
        f"  <= {b['share']:.0%}: [{b['low']:.2f}, {b['high']:.2f}) F1 {b['f1']:.4f} at {b['escalated']:.1%}"
        for b in bound["best_band_at_share"]
    ]
    return "\n".join(lines)


async def load(url: str, model: str, pairs: list[tuple[str, str]], clients: int, seconds: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        tally = await closed_loop(predict_sender(client, url, model=model), mixed(pairs), clients, seconds, warmup=3.0)
    return tally.summary()


def stage_costs(before: Samples, after: Samples) -> dict[str, float]:
    """What each model's batches were during a load: pairs per batch and forward milliseconds per pair (from the
    per-model batch and inference histograms), and the workers' busy seconds (the caller divides them by the time):
    whether the cascade's stages run at their own costs or slower beside each other (PARASERVE_MODEL_AFFINITY_MS)."""
    figures: dict[str, float] = {"worker_busy_s": metric_delta(before, after, "paraserve_worker_busy_seconds_total")}
    for stage in STAGES:
        rows = metric_delta(before, after, "paraserve_batch_rows_sum", model=stage)
        batches = metric_delta(before, after, "paraserve_batch_rows_count", model=stage)
        if batches:
            forward = metric_delta(before, after, "paraserve_inference_duration_seconds_sum", model=stage)
            figures |= {f"{stage}_rows_per_batch": rows / batches, f"{stage}_forward_ms_per_pair": 1000 * forward / rows}
    return figures


def measure(url: str, model: str, dev: list[Any], clients: int, seconds: float, idle: bool = False) -> dict[str, float]:
    """Saturation at `clients` (with each stage's batch figures), dev figures, and (with `idle`) the p50 of one pair at a
    time with nothing else running."""
    pairs = [(p.sentence1, p.sentence2) for p in dev]
    before = samples(httpx.get(f"{url}/metrics", timeout=30).text)
    started = time.perf_counter()
    saturation = asyncio.run(load(url, model, pairs, clients, seconds))
    elapsed = time.perf_counter() - started
    costs = stage_costs(before, samples(httpx.get(f"{url}/metrics", timeout=30).text))
    costs["worker_busy_share"] = costs.pop("worker_busy_s") / (elapsed * WORKERS)
    scores, decided = dev_scores(url, model, dev)
    row = {**saturation, **costs, **dev_figures(scores, decided, dev), "dev_scores": scores}
    if idle:
        row["idle_p50_s"] = asyncio.run(idle_latency(url, pairs, model))["p50_s"]
    return row


def show(row: dict[str, float]) -> str:
    timing = f"{row['pairs_per_s']:8.1f} {row['p50_s'] * 1000:7.0f} {row['p99_s'] * 1000:7.0f}"
    stages = " ".join(
        f"{row[f'{s}_rows_per_batch']:5.1f} {row[f'{s}_forward_ms_per_pair']:6.1f}" if f"{s}_rows_per_batch" in row else f"{'-':>12s}"
        for s in STAGES
    )
    low, high = row["f1_gap_90"]
    gap = f"{row['f1_gap'] * 100:+6.2f} [{low * 100:+6.2f}, {high * 100:+6.2f}]"
    idle = f" {row['idle_p50_s'] * 1000:12.1f}" if "idle_p50_s" in row else ""
    return f"{timing} {row['f1']:7.4f} {gap} {row['escalated']:9.1%} {stages} {row['worker_busy_share']:5.0%}{idle}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", type=Path, required=True)
    parser.add_argument("--accurate", type=Path, required=True)
    parser.add_argument("--cascade", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--curve", action="store_true", help="also serve the cascade at symmetric bands 0.5 +- 0.1 .. 0.4")
    parser.add_argument("--json", type=Path, default=Path("bench-out/cascade.json"))
    args = parser.parse_args()
    dev = load_split(args.data_dir, "dev")
    models = f"fast={args.fast},accurate={args.accurate},cascade={args.cascade}"
    settings = {"models": models, "workers": str(WORKERS), "queue_capacity": "512"}
    chosen = read_cascade(args.cascade)
    results: dict[str, Any] = {"models": {}, "curve": []}
    stage_head = " ".join(f"{s[:4] + ' rows':>5s} {'ms/pr':>6s}" for s in STAGES)
    gap_head = "points to accurate (90%)"
    head = f"{'pairs/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'dev F1':>7s} {gap_head:>24s} {'escalated':>9s} {stage_head} {'busy':>5s}"
    print(f"{'model':10s} {head} {'idle p50 ms':>12s}", flush=True)
    with running_server(args.fast, **settings) as server:
        for model in ("accurate", "fast", "cascade"):  # the accurate model's dev scores first: each row's gap is to them
            row = measure(server.url, model, dev, args.clients, args.seconds, idle=True)
            row |= gap_to_accurate(row["dev_scores"], results["models"].get("accurate", row)["dev_scores"], dev)
            results["models"][model] = row
            print(f"{model:10s} {show(row)}", flush=True)
    results["dev_bound"] = dev_bound(results["models"]["fast"]["dev_scores"], results["models"]["accurate"]["dev_scores"], dev)
    print(render_bound(results["dev_bound"]), flush=True)
    if args.curve:
        print(f"\n{'band':12s} {head}", flush=True)
        served_bands = [(0.5 - w, 0.5 + w) for w in (0.1, 0.2, 0.3, 0.4)] + [(chosen.band.low, chosen.band.high)]
        for low, high in served_bands:
            with running_server(args.fast, **settings, cascade_band=f"{low:.2f},{high:.2f}") as server:
                row = {"low": low, "high": high, **measure(server.url, "cascade", dev, args.clients, args.seconds)}
            row |= gap_to_accurate(row.pop("dev_scores"), results["models"]["accurate"]["dev_scores"], dev)
            results["curve"].append(row)
            print(f"[{low:.2f}, {high:.2f}) {show(row)}", flush=True)
    results.update(band=[chosen.band.low, chosen.band.high], clients=args.clients, seconds=args.seconds, workers=WORKERS)
    results["cpu"] = cpu_description()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
