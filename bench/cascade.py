"""The fast model, the accurate one and the cascade over them, served side by side by one server (2 workers): pairs/s
and p50/p99 at 16 clients of 1-8 MRPC dev pairs, and dev F1 and the share of pairs escalated; then the curve of F1
against share escalated, with pairs/s, for symmetric bands around 0.5 (PARASERVE_CASCADE_BAND) and the chosen one.
Prints tables and writes JSON with the CPU. Dev is reported, never used to choose (the band comes from train).

    python -m bench.cascade --fast model-cache/default/artifacts --accurate model-cache/mpnet-base/artifacts \\
        --cascade model-cache/cascade --data-dir ../shared/data/mrpc [--seconds 20] [--curve]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from artifact.cascade import read_cascade
from artifact.kernels import cpu_description
from bench.service import idle_latency
from model_build.mrpc import load_split
from model_build.scoring import f1_accuracy
from tests.harness.load import closed_loop, mixed, predict_sender
from tests.harness.server import running_server


def dev_figures(url: str, model: str, dev: list[Any]) -> dict[str, float]:
    """Dev F1 and accuracy as served (8 pairs a request), and the share of pairs the accurate model decided."""
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
    figures = f1_accuracy([p.label for p in dev], [int(s >= 0.5) for s in scores])
    return {**figures, "escalated": sum(1 for d in decided if d == "accurate") / len(decided)}


async def load(url: str, model: str, pairs: list[tuple[str, str]], clients: int, seconds: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        tally = await closed_loop(predict_sender(client, url, model=model), mixed(pairs), clients, seconds, warmup=3.0)
    return tally.summary()


def measure(url: str, model: str, dev: list[Any], clients: int, seconds: float, idle: bool = False) -> dict[str, float]:
    """Saturation at `clients`, dev figures, and (with `idle`) the p50 of one pair at a time with nothing else running."""
    pairs = [(p.sentence1, p.sentence2) for p in dev]
    row = {**asyncio.run(load(url, model, pairs, clients, seconds)), **dev_figures(url, model, dev)}
    if idle:
        row["idle_p50_s"] = asyncio.run(idle_latency(url, pairs, model))["p50_s"]
    return row


def show(row: dict[str, float]) -> str:
    timing = f"{row['pairs_per_s']:8.1f} {row['p50_s'] * 1000:7.0f} {row['p99_s'] * 1000:7.0f}"
    idle = f" {row['idle_p50_s'] * 1000:12.1f}" if "idle_p50_s" in row else ""
    return f"{timing} {row['f1']:7.4f} {row['escalated']:9.1%}{idle}"


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
    settings = {"models": models, "workers": "2", "queue_capacity": "512"}
    chosen = read_cascade(args.cascade)
    results: dict[str, Any] = {"models": {}, "curve": []}
    head = f"{'pairs/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'dev F1':>7s} {'escalated':>9s}"
    print(f"{'model':10s} {head} {'idle p50 ms':>12s}", flush=True)
    with running_server(args.fast, **settings) as server:
        for model in ("fast", "accurate", "cascade"):
            row = measure(server.url, model, dev, args.clients, args.seconds, idle=True)
            results["models"][model] = row
            print(f"{model:10s} {show(row)}", flush=True)
    if args.curve:
        print(f"\n{'band':12s} {head}", flush=True)
        bands = [(0.5 - w, 0.5 + w) for w in (0.1, 0.2, 0.3, 0.4)] + [(chosen.band.low, chosen.band.high)]
        for low, high in bands:
            with running_server(args.fast, **settings, cascade_band=f"{low:.2f},{high:.2f}") as server:
                row = {"low": low, "high": high, **measure(server.url, "cascade", dev, args.clients, args.seconds)}
            results["curve"].append(row)
            print(f"[{low:.2f}, {high:.2f}) {show(row)}", flush=True)
    results.update(band=[chosen.band.low, chosen.band.high], clients=args.clients, seconds=args.seconds, workers=2, cpu=cpu_description())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
