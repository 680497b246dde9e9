"""Service vs raw model: forward time, saturation throughput, idle latency, and shape buckets vs 8x128 padding.

Starts its own servers on 127.0.0.1 (one at a time) and stops them; ratios are measured side by side in one run.

    python bench/service.py [--artifacts model-cache/default/artifacts] [--data-dir ../shared/data/mrpc]
                            [--seconds 20] [--json bench-out/service.json] [--profile bench-out/profile.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.local_server import running_server
from app.runtime import Runtime
from app.scrape import histogram_mean, samples
from model_build.mrpc import load_split
from model_build.parity_pairs import PARITY_PAIRS

IDLE_REQUESTS = 60
# Concurrent clients of 8 pairs each. 4 keep a full batch queued behind the running one (and give the length-aware
# batcher some choice) while leaving the second vCPU as free as possible for the event loop and tokenizer.
CLIENTS = 4


def raw_forward(artifact: Path, rows: list[Any], runs: int, threads: int = 1, engine: str | None = None) -> float:
    """Median forward time of one full batch at the trace shape, as the service runs it (inference mode)."""
    runtime = Runtime.load(artifact, threads=threads, quantized_engine=engine)
    runtime.warm_up(2)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        runtime.forward(rows[:8])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def idle_latency(url: str, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """One pair at a time, nothing else running: p50/p90 over IDLE_REQUESTS after 5 warm requests.

    Also the p50 of (latency - the server's own x-inference-time) per request: the service's overhead, free of
    the drift of forward times between processes.
    """
    async with httpx.AsyncClient(timeout=60) as client:
        latencies, overheads, forwards = [], [], []
        for i in range(IDLE_REQUESTS + 5):
            a, b = pairs[i % len(pairs)]
            started = time.perf_counter()
            r = await client.post(f"{url}/predict", json={"pairs": [{"sentence1": a, "sentence2": b}]})
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
    """Label flips between two score maps over the pairs both saw."""
    common = sorted(set(a) & set(b))
    flips = [{"pair": i, "fixed": a[i], "buckets": b[i]} for i in common if (a[i] >= 0.5) != (b[i] >= 0.5)]
    diffs = [abs(a[i] - b[i]) for i in common]
    return {"pairs_compared": len(common), "of": pairs_count, "label_flips": flips, "max_abs_score_diff": max(diffs, default=0.0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("model-cache/default/artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/mrpc"))
    parser.add_argument("--seconds", type=float, default=20.0, help="measured saturation window per configuration")
    parser.add_argument("--json", type=Path, default=Path("bench-out/service.json"))
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the int8 fixed server under load; write the breakdown here")
    args = parser.parse_args(argv)
    if args.profile and not Path(sys.executable).with_name("py-spy").exists():
        parser.error("--profile needs py-spy in this environment (it is in the dev extra: scripts/setup.sh)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)

    source = "MRPC dev" if (args.data_dir / "dev.tsv").is_file() else "built-in pairs"
    pairs = [(p.sentence1, p.sentence2) for p in load_split(args.data_dir, "dev")] if source == "MRPC dev" else list(PARITY_PAIRS)
    rows = Runtime.load(args.artifacts / "int8").encode(pairs[:8])
    result: dict[str, Any] = {"pairs": source, "cpus": os.cpu_count(), "torch_version": torch.__version__, "clients": CLIENTS}

    print("raw forward, one 8x128 batch, median:", flush=True)
    raw = {
        "int8_onednn": raw_forward(args.artifacts / "int8", rows, 20, engine="onednn"),
        "int8_2_threads": raw_forward(args.artifacts / "int8", rows, 20, threads=2),
    }
    result["raw_forward_s"] = raw

    configs = [("fp32", "fixed", {}), ("int8", "fixed", {}), ("int8", "buckets", {"padding": "buckets"})]
    served: dict[str, dict[str, Any]] = {}
    for variant, padding, settings in configs:
        name = f"{variant} {padding}"
        print(f"{name}: idle latency, then {CLIENTS} clients x 8 pairs for {args.seconds:.0f} s", flush=True)
        if padding == "fixed":  # raw forward right before and right after this server's run: machines drift
            raw_runs = [raw_forward(args.artifacts / variant, rows, 10 if variant == "fp32" else 20)]
        with running_server(args.artifacts / variant, **settings) as server:
            idle = asyncio.run(idle_latency(server.url, pairs))
            sat = asyncio.run(saturate(server.url, pairs, args.seconds))
        if padding == "fixed":
            raw_runs.append(raw_forward(args.artifacts / variant, rows, 10 if variant == "fp32" else 20))
            raw[variant] = statistics.mean(raw_runs)
            print(f"  raw forward {raw_runs[0] * 1000:.1f} ms before, {raw_runs[1] * 1000:.1f} ms after", flush=True)
        served[name] = {"idle": idle, **{k: v for k, v in sat.items() if k != "scores"}}
        served[name]["_scores"] = sat["scores"]
        print(f"  idle p50 {idle['p50_s'] * 1000:.1f} ms; {sat['pairs_per_s']:.1f} pairs/s; rows/batch {sat['mean_batch_rows']:.2f}; "
              f"token fill {sat['mean_token_fill']:.1%}", flush=True)  # fmt: skip

    if args.profile:  # a separate run: py-spy's sampling costs CPU the measured runs must not lose
        print(f"int8 fixed under py-spy for {args.seconds:.0f} s", flush=True)
        with running_server(args.artifacts / "int8") as server:
            profiler = concurrent.futures.ThreadPoolExecutor(1).submit(_profile_later, server.process.pid, args)
            asyncio.run(saturate(server.url, pairs, args.seconds))
            result["profile"] = profiler.result()

    flips = disagreements(served["int8 fixed"].pop("_scores"), served["int8 buckets"].pop("_scores"), len(pairs))
    served["fp32 fixed"].pop("_scores")
    int8_fixed, int8_buckets, fp32_fixed = served["int8 fixed"], served["int8 buckets"], served["fp32 fixed"]
    # Offline, deterministic: the dev set in order, 8 at a time, fixed 8x128 vs bucketed shapes.
    fixed_rt = Runtime.load(args.artifacts / "int8")
    bucket_rt = Runtime.load(args.artifacts / "int8", padding="buckets")
    offline = disagreements(dict(enumerate(fixed_rt.predict(pairs))), dict(enumerate(bucket_rt.predict(pairs))), len(pairs))
    tolerance = json.loads((args.artifacts / "int8" / "manifest.json").read_text())["parity"]["max_abs_score_diff"]
    summary = {
        "service_over_raw_fp32": fp32_fixed["pairs_per_s"] / (8 / raw["fp32"]),
        "service_over_raw_int8": int8_fixed["pairs_per_s"] / (8 / raw["int8"]),
        "service_over_server_forward_fp32": fp32_fixed["over_server_forward"],
        "service_over_server_forward_int8": int8_fixed["over_server_forward"],
        "idle_p50_minus_forward_int8_s": int8_fixed["idle"]["p50_s"] - raw["int8"],
        "idle_p50_minus_forward_fp32_s": fp32_fixed["idle"]["p50_s"] - raw["fp32"],
        "idle_overhead_p50_int8_s": int8_fixed["idle"]["overhead_p50_s"],
        "idle_overhead_p50_fp32_s": fp32_fixed["idle"]["overhead_p50_s"],
        "buckets_over_fixed_int8": int8_buckets["pairs_per_s"] / int8_fixed["pairs_per_s"],
        "int8_over_fp32_fixed": int8_fixed["pairs_per_s"] / fp32_fixed["pairs_per_s"],
        "label_flips_served": len(flips["label_flips"]),
        "label_flips_offline": len(offline["label_flips"]),
        "score_tolerance": tolerance,
        "flips_all_borderline": all(abs(f["fixed"] - 0.5) <= tolerance for f in flips["label_flips"] + offline["label_flips"]),
    }
    result.update(served=served, flips_served=flips, flips_offline=offline, summary=summary)

    print("\n| | fp32 fixed | int8 fixed | int8 buckets |\n|---|---:|---:|---:|")
    print(f"| raw forward, 8x128 (ms) | {raw['fp32'] * 1000:.1f} | {raw['int8'] * 1000:.1f} | |")
    print(
        "| forward in the server (ms per batch) | " + " | ".join(f"{served[n]['server_forward_mean_s'] * 1000:.1f}" for n in served) + " |"
    )
    print(f"| raw pairs/s (8 / forward) | {8 / raw['fp32']:.1f} | {8 / raw['int8']:.1f} | |")
    print("| service pairs/s at saturation | " + " | ".join(f"{served[n]['pairs_per_s']:.1f}" for n in served) + " |")
    print(f"| service / raw | {summary['service_over_raw_fp32']:.2f} | {summary['service_over_raw_int8']:.2f} | |")
    print("| idle p50 (ms) | " + " | ".join(f"{served[n]['idle']['p50_s'] * 1000:.1f}" for n in served) + " |")
    print("| rows per batch | " + " | ".join(f"{served[n]['mean_batch_rows']:.2f}" for n in served) + " |")
    print("| real / padded tokens | " + " | ".join(f"{served[n]['mean_token_fill']:.1%}" for n in served) + " |")
    print(
        f"\nservice / raw: fp32 {summary['service_over_raw_fp32']:.2f}, int8 {summary['service_over_raw_int8']:.2f} (target >= 0.90); "
        f"service / its own forward rate: fp32 {summary['service_over_server_forward_fp32']:.2f}, "
        f"int8 {summary['service_over_server_forward_int8']:.2f}"
    )
    ms = {k: v * 1000 for k, v in summary.items() if k.startswith("idle_")}
    print(
        f"idle p50 - raw forward: int8 {ms['idle_p50_minus_forward_int8_s']:+.1f} ms, fp32 {ms['idle_p50_minus_forward_fp32_s']:+.1f} ms "
        f"(target <= +10 ms); p50 of latency - the server's own forward: int8 {ms['idle_overhead_p50_int8_s']:+.1f} ms, "
        f"fp32 {ms['idle_overhead_p50_fp32_s']:+.1f} ms"
    )
    print(f"buckets / fixed throughput (int8, {source}): {summary['buckets_over_fixed_int8']:.2f}x (target >= 1.8)")
    print(f"label flips vs fixed padding: served {summary['label_flips_served']} of {flips['pairs_compared']}, "
          f"offline {summary['label_flips_offline']} of {offline['pairs_compared']}; all within the int8 score tolerance "
          f"{tolerance:.3f} of 0.5: {summary['flips_all_borderline']}")  # fmt: skip
    for f in flips["label_flips"] + offline["label_flips"]:
        print(f"  pair {f['pair']}: fixed {f['fixed']:.3f} buckets {f['buckets']:.3f}")
    print(f"int8 / fp32 service throughput (fixed): {summary['int8_over_fp32_fixed']:.2f}x")
    print(
        f"raw int8 forward with the onednn engine: {raw['int8_onednn'] * 1000:.1f} ms; at 2 threads: {raw['int8_2_threads'] * 1000:.1f} ms"
    )
    if "profile" in result:
        print("\nwhere the int8 server's time goes under load (py-spy, share of wall time each thread is busy):")
        for k, v in sorted(result["profile"].items(), key=lambda kv: -kv[1]):
            print(f"  {k:24s} {v:6.1%}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


def _profile_later(pid: int, args: argparse.Namespace) -> dict[str, float]:
    """py-spy the server once the saturation run is past its warm-up."""
    time.sleep(4)
    return profile(pid, max(5.0, args.seconds - 4), args.profile)


if __name__ == "__main__":
    sys.exit(main())
