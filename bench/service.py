"""Service vs raw model: forward time, saturation throughput, idle latency, and shape buckets vs 8x128 padding.

Starts its own servers on 127.0.0.1 (one at a time) and stops them; ratios are measured side by side in one run.

    python -m bench.service [--artifacts model-cache/default/artifacts] [--data-dir ../shared/data/mrpc]
                            [--seconds 20] [--json bench-out/service.json] [--profile bench-out/profile.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import torch

from artifact.kernels import cpu_description
from artifact.runtime import Runtime, configure_process
from model_build.mrpc import load_split
from model_build.parity_pairs import PARITY_PAIRS
from tests.harness.load import http_load, mixed
from tests.harness.scrape import histogram_mean, metric_sum, samples
from tests.harness.server import running_server

IDLE_REQUESTS = 60
# Concurrent clients of 8 pairs each. 4 keep a full batch queued behind the running one (and give the length-aware
# batcher some choice) while leaving the second vCPU as free as possible for the event loop and tokenizer.
CLIENTS = 4


def raw_forward(artifact: Path, rows: list[Any], runs: int, threads: int = 1, engine: str | None = None) -> float:
    """Median forward time of one full batch at the trace shape, as the service runs it (inference mode).

    The quantized engine is process-wide: it is put back afterwards, so one onednn measurement leaves the rest on x86.
    """
    previous = torch.backends.quantized.engine
    try:
        configure_process(threads=threads, quantized_engine=engine or "x86")
        runtime = Runtime.load(artifact, padding="fixed")
        runtime.warm_up(2)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            runtime.forward(rows[:8])
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        torch.backends.quantized.engine = previous
        torch.set_num_threads(1)


async def idle_latency(url: str, pairs: list[tuple[str, str]], model: str | None = None) -> dict[str, float]:
    """One pair at a time, nothing else running: p50/p90 over IDLE_REQUESTS after 5 warm requests (to `model`, or the
    server's default).

    Also the p50 of (latency - the server's own x-inference-time) per request: the service's overhead, free of
    the drift of forward times between processes.
    """
    async with httpx.AsyncClient(timeout=60) as client:
        latencies, overheads, forwards = [], [], []
        for i in range(IDLE_REQUESTS + 5):
            a, b = pairs[i % len(pairs)]
            started = time.perf_counter()
            body: dict[str, Any] = {"pairs": [{"sentence1": a, "sentence2": b}]}
            if model is not None:
                body["model"] = model
            r = await client.post(f"{url}/predict", json=body)
            elapsed = time.perf_counter() - started
            r.raise_for_status()
            if i >= 5:
                forward = float(r.headers["x-inference-time"]) / 1000
                latencies.append(elapsed)
                forwards.append(forward)
                overheads.append(elapsed - forward)
    q = statistics.quantiles(latencies, n=10)
    return {
        "p50_s": statistics.median(latencies),
        "p90_s": q[8],
        "server_forward_p50_s": statistics.median(forwards),
        "overhead_p50_s": statistics.median(overheads),
        "requests": len(latencies),
    }


async def saturate(url: str, pairs: list[tuple[str, str]], seconds: float, warmup: float = 3.0) -> dict[str, Any]:
    """CLIENTS clients sending consecutive 8-pair slices of `pairs`, back to back; pairs/s over the measured window."""
    scores: dict[int, float] = {}
    counted = Counter[str]()
    start_measure = time.monotonic() + warmup
    stop = start_measure + seconds
    cursor = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal cursor
        while time.monotonic() < stop:
            first = cursor
            cursor += 8
            indices = [(first + k) % len(pairs) for k in range(8)]
            body = {"pairs": [{"sentence1": pairs[i][0], "sentence2": pairs[i][1]} for i in indices]}
            r = await client.post(f"{url}/predict", json=body)
            done = time.monotonic()
            if r.status_code != 200:
                counted[f"http_{r.status_code}"] += 1
                continue
            for i, p in zip(indices, r.json()["predictions"], strict=True):
                scores[i] = p["score"]
            if start_measure <= done <= stop:
                counted["pairs"] += 8
                counted["requests"] += 1

    before = samples(httpx.get(f"{url}/metrics").text)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=CLIENTS)) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CLIENTS)))
    after = samples(httpx.get(f"{url}/metrics").text)
    fill = histogram_mean(before, after, "paraserve_batch_token_fill_ratio")
    rows = histogram_mean(before, after, "paraserve_batch_rows")
    forward = histogram_mean(before, after, "paraserve_inference_duration_seconds")
    return {
        "pairs_per_s": counted["pairs"] / seconds,
        "requests": counted["requests"],
        "errors": {k: v for k, v in counted.items() if k.startswith("http_")},
        "mean_batch_rows": rows,
        "mean_token_fill": fill,
        "server_forward_mean_s": forward,
        # The service's own efficiency, free of drift between processes: the share of the model's capacity delivered.
        "over_server_forward": counted["pairs"] / seconds / (rows / forward) if forward else float("nan"),
        "scores": scores,
    }


async def closed_loop(url: str, pairs: list[tuple[str, str]], clients: int, seconds: float, warmup: float = 3.0) -> dict[str, float]:
    """The issue's load over POST /predict: `clients` clients sending 1-8 consecutive pairs per request (half single
    pairs), back to back (tests/harness/load.py)."""
    tally = await http_load(url, mixed(pairs), clients, seconds, warmup=warmup)
    return tally.summary()


WORKER_CONFIGS = {
    "1 worker": ("int8-calibrated", {"workers": "1"}),
    "2 workers": ("int8-calibrated", {"workers": "2"}),
    "1 worker x 2 threads": ("int8-calibrated", {"workers": "1", "torch_threads": "2"}),
}
ENGINE_CONFIGS = {
    "int8-calibrated on TorchScript": ("int8-calibrated", {"workers": "2"}),
    "openvino-int8 on OpenVINO": ("openvino-int8", {"workers": "2"}),
}


def with_root(configs: dict[str, Any], root: Path, also: Path | None) -> dict[str, Any]:
    """(root, variant, settings) per config; with `also`, each config again from that other artifacts root."""
    out = {name: (root, variant, settings) for name, (variant, settings) in configs.items()}
    if also is not None:
        out |= {f"{name} [{also.name}]": (also, variant, settings) for name, (variant, settings) in configs.items()}
    return out


def comparison_table(args: argparse.Namespace, pairs: list[tuple[str, str]], source: str, configs: dict[str, Any], out_name: str) -> int:
    """Servers side by side, each alone with the load generator beside it: 1 client, then 16; `--rounds` interleaved
    rounds (each server started anew per round) and the median, since one run on a shared 2-core host drifts by 10-15%."""
    results: dict[str, Any] = {
        "pairs": source,
        "cpu": cpu_description(),
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "rounds": args.rounds,
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for r in range(args.rounds):
        for name, (root, variant, settings) in configs.items():
            print(f"round {r + 1}/{args.rounds}, {name}: 1 client, then 16 clients, {args.seconds:.0f} s each", flush=True)
            with running_server(root / variant, **settings) as server:
                one = asyncio.run(closed_loop(server.url, pairs, 1, args.seconds))
                many = asyncio.run(closed_loop(server.url, pairs, 16, args.seconds))
                rss = metric_sum(samples(httpx.get(f"{server.url}/metrics").text), "process_resident_memory_bytes")
            runs[name].append({"one_client": one, "sixteen_clients": many, "rss_bytes": rss})
    for name, (root, variant, settings) in configs.items():
        median = {
            part: {k: statistics.median(run[part][k] for run in runs[name]) for k in runs[name][0][part]}
            for part in ("one_client", "sixteen_clients")
        }
        results[name] = {"artifacts": str(root), "variant": variant, "settings": settings, **median, "runs": runs[name]}
        results[name]["rss_bytes"] = statistics.median(run["rss_bytes"] for run in runs[name])
    base = results[next(iter(configs))]
    print(f"\n{source} traffic (1-8 pairs per request); CPU {results['cpu']['cpu_model']}, {os.cpu_count()} cores; median of {args.rounds}")
    head = f"{'server':44s} {'pairs/s (16 cl.)':>16s} {'p50':>8s} {'p99':>8s} {'idle p50 (1 cl.)':>17s} {'p99':>8s}"
    print(head + f" {'RSS MB':>7s} {'x first':>8s}")
    for name in configs:
        r = results[name]
        m, o = r["sixteen_clients"], r["one_client"]
        spread = [run["sixteen_clients"]["pairs_per_s"] for run in r["runs"]]
        print(
            f"{name:44s} {m['pairs_per_s']:16.1f} {m['p50_s'] * 1000:6.0f}ms {m['p99_s'] * 1000:6.0f}ms {o['p50_s'] * 1000:15.1f}ms "
            f"{o['p99_s'] * 1000:6.1f}ms {r['rss_bytes'] / 1e6:7.0f} {m['pairs_per_s'] / base['sixteen_clients']['pairs_per_s']:7.2f}x"
            f"  (rounds: {', '.join(f'{x:.0f}' for x in spread)})"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    out = args.json.with_name(out_name)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


def profile(pid: int, seconds: float, out: Path) -> dict[str, float]:
    """py-spy samples of every server thread under load: the fraction of wall time each kind of thread is busy."""
    raw = out.with_suffix(".folded")
    spy = str(Path(sys.executable).with_name("py-spy"))
    command = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--format",
        "raw",
        "--output",
        str(raw),
        "--threads",
        "--idle",
    ]
    subprocess.run(command, check=True, capture_output=True)
    samples, busy, threads = Counter[str](), Counter[str](), {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        kind = _thread_kind(frames[0])
        threads.setdefault(kind, set()).add(frames[0])
        samples[kind] += int(count)
        if not any(marker in frames[-1] for marker in IDLE_LEAVES):
            busy[kind] += int(count)
    # Per kind: busy samples / samples of one such thread (threads of a kind are sampled equally often).
    shares = {kind: busy[kind] / (samples[kind] / len(threads[kind])) for kind in samples}
    out.write_text("".join(f"{k:32s} busy {v:6.1%} of wall time\n" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])))
    return shares


IDLE_LEAVES = (
    "Runner.run",
    "_worker (concurrent/futures/thread.py",
    "wait (threading.py",
    "select",
    "_wait_for_tstate_lock",
    "worker (anyio",
)


def _thread_kind(first_frame: str) -> str:
    name = first_frame.split("):", 1)[-1].strip()
    for prefix, kind in (
        ("model", "model thread"),
        ("tokenize", "tokenizer thread"),
        ("MainThread", "event loop"),
        ("AnyIO", "threadpool"),
    ):
        if name.startswith(prefix):
            return kind
    return name or "other"


def disagreements(a: dict[int, float], b: dict[int, float], pairs_count: int) -> dict[str, Any]:
    """Label flips between fixed-padding scores `a` and another run's `b`, over the pairs both saw."""
    common = sorted(set(a) & set(b))
    flips = [{"pair": i, "fixed": a[i], "other": b[i]} for i in common if (a[i] >= 0.5) != (b[i] >= 0.5)]
    diffs = [abs(a[i] - b[i]) for i in common]
    return {"pairs_compared": len(common), "of": pairs_count, "label_flips": flips, "max_abs_score_diff": max(diffs, default=0.0)}


def offline_flips(artifact: Path, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Deterministic, in-process: the dev set 8 at a time at fixed 8x128, vs bucketed shapes, vs shuffled companions."""
    fixed_rt = Runtime.load(artifact, padding="fixed")
    fixed = dict(enumerate(fixed_rt.predict(pairs)))
    bucketed = dict(enumerate(Runtime.load(artifact, padding="buckets").predict(pairs)))
    order = list(range(len(pairs)))
    random.Random(0).shuffle(order)
    shuffled = dict(zip(order, fixed_rt.predict([pairs[i] for i in order]), strict=True))
    return {"buckets": disagreements(fixed, bucketed, len(pairs)), "shuffled_fixed": disagreements(fixed, shuffled, len(pairs))}


# (artifact variant, padding): the tutorial's fixed 8x128 for each variant, then shape buckets.
CONFIGS = [("fp32", "fixed"), ("int8", "fixed"), ("int8", "buckets"), ("int8-calibrated", "fixed"), ("int8-calibrated", "buckets")]
RAW_RUNS = {"fp32": 10, "int8": 20, "int8-calibrated": 20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("model-cache/default/artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/mrpc"))
    parser.add_argument("--seconds", type=float, default=20.0, help="measured saturation window per configuration")
    parser.add_argument("--json", type=Path, default=Path("bench-out/service.json"))
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the default server under load; write the breakdown here")
    parser.add_argument("--workers", action="store_true", help="only the workers table: 1 worker, 2 workers, 1 worker x 2 threads")
    parser.add_argument("--engines", action="store_true", help="only the engines table: int8-calibrated vs openvino-int8, 2 workers")
    parser.add_argument("--rounds", type=int, default=1, help="--workers/--engines: interleaved rounds (median reported)")
    parser.add_argument("--also-artifacts", type=Path, default=None, help="--engines: the same configurations from this artifacts root too")
    args = parser.parse_args(argv)
    if args.profile and not Path(sys.executable).with_name("py-spy").exists():
        parser.error("--profile needs py-spy in this environment (it is in the dev extra: scripts/setup.sh)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)

    source = "MRPC dev" if (args.data_dir / "dev.tsv").is_file() else "built-in pairs"
    pairs = [(p.sentence1, p.sentence2) for p in load_split(args.data_dir, "dev")] if source == "MRPC dev" else list(PARITY_PAIRS)
    if args.workers:
        return comparison_table(args, pairs, source, with_root(WORKER_CONFIGS, args.artifacts, None), "workers.json")
    if args.engines:
        return comparison_table(args, pairs, source, with_root(ENGINE_CONFIGS, args.artifacts, args.also_artifacts), "engines.json")
    rows = Runtime.load(args.artifacts / "int8").encode(pairs[:8])
    result: dict[str, Any] = {
        "pairs": source,
        "cpus": os.cpu_count(),
        "cpu": cpu_description(),
        "torch_version": torch.__version__,
        "clients": CLIENTS,
    }

    print("raw forward, one 8x128 batch, median:", flush=True)
    raw = {
        "int8_onednn": raw_forward(args.artifacts / "int8", rows, 20, engine="onednn"),
        "int8_2_threads": raw_forward(args.artifacts / "int8", rows, 20, threads=2),
    }
    result["raw_forward_s"] = raw

    served: dict[str, dict[str, Any]] = {}
    scores: dict[str, dict[int, float]] = {}
    for variant, padding in CONFIGS:
        name = f"{variant} {padding}"
        print(f"{name}: idle latency, then {CLIENTS} clients x 8 pairs for {args.seconds:.0f} s", flush=True)
        if padding == "fixed":  # raw forward right before and right after this server's run: machines drift
            raw_runs = [raw_forward(args.artifacts / variant, rows, RAW_RUNS[variant])]
        with running_server(args.artifacts / variant, padding=padding, workers="1") as server:  # one model thread vs its raw forward
            idle = asyncio.run(idle_latency(server.url, pairs))
            sat = asyncio.run(saturate(server.url, pairs, args.seconds))
        if padding == "fixed":
            raw_runs.append(raw_forward(args.artifacts / variant, rows, RAW_RUNS[variant]))
            raw[variant] = statistics.mean(raw_runs)
            print(f"  raw forward {raw_runs[0] * 1000:.1f} ms before, {raw_runs[1] * 1000:.1f} ms after", flush=True)
        scores[name] = sat.pop("scores")
        served[name] = {"idle": idle, **sat}
        print(f"  idle p50 {idle['p50_s'] * 1000:.1f} ms; {sat['pairs_per_s']:.1f} pairs/s; rows/batch {sat['mean_batch_rows']:.2f}; "
              f"token fill {sat['mean_token_fill']:.1%}", flush=True)  # fmt: skip

    if args.profile:  # a separate run: py-spy's sampling costs CPU the measured runs must not lose
        print(f"int8-calibrated (the default) under py-spy for {args.seconds:.0f} s", flush=True)
        with running_server(args.artifacts / "int8-calibrated", workers="1") as server:
            profiler = concurrent.futures.ThreadPoolExecutor(1).submit(_profile_later, server.process.pid, args)
            asyncio.run(saturate(server.url, pairs, args.seconds))
            result["profile"] = profiler.result()

    summary: dict[str, Any] = {}
    flips: dict[str, Any] = {}
    for variant in ("fp32", "int8", "int8-calibrated"):
        fixed = served[f"{variant} fixed"]
        summary[f"service_over_raw_{variant}"] = fixed["pairs_per_s"] / (8 / raw[variant])
        summary[f"service_over_server_forward_{variant}"] = fixed["over_server_forward"]
        summary[f"idle_p50_minus_forward_{variant}_s"] = fixed["idle"]["p50_s"] - raw[variant]
        summary[f"idle_overhead_p50_{variant}_s"] = fixed["idle"]["overhead_p50_s"]
    for variant in ("int8", "int8-calibrated"):
        # Borderline: a flipped pair whose fixed-padding score is within the variant's own int8-vs-fp32 score
        # difference (measured by the build on the parity pairs) of 0.5.
        tolerance = json.loads((args.artifacts / variant / "manifest.json").read_text())["parity"]["max_abs_score_diff"]
        flips[variant] = {
            "served": disagreements(scores[f"{variant} fixed"], scores[f"{variant} buckets"], len(pairs)),
            **offline_flips(args.artifacts / variant, pairs),
            "score_tolerance": tolerance,
        }
        found = flips[variant]["served"]["label_flips"] + flips[variant]["buckets"]["label_flips"]
        summary[f"buckets_over_fixed_{variant}"] = served[f"{variant} buckets"]["pairs_per_s"] / served[f"{variant} fixed"]["pairs_per_s"]
        summary[f"label_flips_served_{variant}"] = len(flips[variant]["served"]["label_flips"])
        summary[f"label_flips_offline_{variant}"] = len(flips[variant]["buckets"]["label_flips"])
        summary[f"label_flips_shuffled_fixed_{variant}"] = len(flips[variant]["shuffled_fixed"]["label_flips"])
        summary[f"flips_all_borderline_{variant}"] = all(abs(f["fixed"] - 0.5) <= tolerance for f in found)
    summary["default_over_tutorial_int8"] = served["int8-calibrated buckets"]["pairs_per_s"] / served["int8 fixed"]["pairs_per_s"]
    summary["int8_over_fp32_fixed"] = served["int8 fixed"]["pairs_per_s"] / served["fp32 fixed"]["pairs_per_s"]
    result.update(served=served, flips=flips, summary=summary)
    print_report(served, raw, summary, flips, source)
    if "profile" in result:
        print("\nwhere the default server's time goes under load (py-spy, share of wall time each thread is busy):")
        for k, v in sorted(result["profile"].items(), key=lambda kv: -kv[1]):
            print(f"  {k:24s} {v:6.1%}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


def print_report(served: dict[str, Any], raw: dict[str, float], summary: dict[str, Any], flips: dict[str, Any], source: str) -> None:
    """The summary table (docs/performance.md quotes it), then the targets line by line."""
    names = list(served)
    raw_of = {n: raw.get(n.split()[0]) if n.endswith("fixed") else None for n in names}

    def row(label: str, cells: list[str]) -> None:
        print(f"| {label} | " + " | ".join(cells) + " |")

    print("\n| | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    row("raw forward, 8x128 (ms)", [f"{raw_of[n] * 1000:.1f}" if raw_of[n] else "" for n in names])
    row("forward in the server (ms per batch)", [f"{served[n]['server_forward_mean_s'] * 1000:.1f}" for n in names])
    row("service pairs/s at saturation", [f"{served[n]['pairs_per_s']:.1f}" for n in names])
    row("service / raw (8 / forward)", [f"{served[n]['pairs_per_s'] / (8 / raw_of[n]):.2f}" if raw_of[n] else "" for n in names])
    row("idle p50 (ms)", [f"{served[n]['idle']['p50_s'] * 1000:.1f}" for n in names])
    row("rows per batch", [f"{served[n]['mean_batch_rows']:.2f}" for n in names])
    row("real / padded tokens", [f"{served[n]['mean_token_fill']:.1%}" for n in names])
    ratios = ", ".join(f"{v} {summary[f'service_over_raw_{v}']:.2f}" for v in ("fp32", "int8", "int8-calibrated"))
    own = ", ".join(f"{v} {summary[f'service_over_server_forward_{v}']:.2f}" for v in ("fp32", "int8", "int8-calibrated"))
    print(f"\nservice / raw: {ratios} (target >= 0.90); service / its own forward rate: {own}")
    idle = ", ".join(f"{v} {summary[f'idle_p50_minus_forward_{v}_s'] * 1000:+.1f} ms" for v in ("fp32", "int8", "int8-calibrated"))
    overhead = ", ".join(f"{v} {summary[f'idle_overhead_p50_{v}_s'] * 1000:+.1f} ms" for v in ("fp32", "int8", "int8-calibrated"))
    print(f"idle p50 - raw forward: {idle} (target <= +10 ms); p50 of latency - the server's own forward: {overhead}")
    for v in ("int8-calibrated", "int8"):
        f = flips[v]
        print(
            f"{v}: buckets / fixed throughput ({source}) {summary[f'buckets_over_fixed_{v}']:.2f}x (target >= 1.8); label flips "
            f"buckets vs fixed: served {summary[f'label_flips_served_{v}']} of {f['served']['pairs_compared']} (max |score diff| "
            f"{f['served']['max_abs_score_diff']:.4f}), offline {summary[f'label_flips_offline_{v}']} of {f['buckets']['pairs_compared']} "
            f"(max {f['buckets']['max_abs_score_diff']:.4f}); fixed vs fixed with shuffled batch companions: "
            f"{summary[f'label_flips_shuffled_fixed_{v}']} (max {f['shuffled_fixed']['max_abs_score_diff']:.4f}); all flips within "
            f"{f['score_tolerance']:.3f} of 0.5: {summary[f'flips_all_borderline_{v}']}"
        )
        for flip in f["served"]["label_flips"] + f["buckets"]["label_flips"]:
            print(f"  pair {flip['pair']}: fixed {flip['fixed']:.3f} buckets {flip['other']:.3f}")
    print(f"default (int8-calibrated, buckets) / tutorial int8 at 8x128: {summary['default_over_tutorial_int8']:.2f}x pairs/s")
    print(f"int8 / fp32 service throughput (fixed): {summary['int8_over_fp32_fixed']:.2f}x")
    onednn, two = raw["int8_onednn"] * 1000, raw["int8_2_threads"] * 1000
    print(f"raw int8 forward with the onednn engine: {onednn:.1f} ms; at 2 threads: {two:.1f} ms")


def _profile_later(pid: int, args: argparse.Namespace) -> dict[str, float]:
    """py-spy the server once the saturation run is past its warm-up."""
    time.sleep(4)
    return profile(pid, max(5.0, args.seconds - 4), args.profile)


if __name__ == "__main__":
    sys.exit(main())
