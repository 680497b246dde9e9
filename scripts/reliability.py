#!/usr/bin/env python3
"""Reliability under abuse: 2x overload, clients that leave, and SIGTERM under load. Prints counts; exits 1 on a breach.

    python scripts/reliability.py --spawn ARTIFACT_DIR [--quick] [--queue-capacity N]   # starts its own servers
    python scripts/reliability.py --url http://127.0.0.1:8000 [--quick]                # overload + clients gone only

Every loop is bounded in time and in requests; traffic goes only to the given URL or to servers on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.local_server import LocalServer, start_server
from harness.scrape import metric_delta, metric_sum, samples
from model_build.parity_pairs import PARITY_PAIRS

CLIENT_TIMEOUT_S = 60.0  # generous: a request without an answer in a minute is "lost"
MAX_REQUESTS_PER_PHASE = 200_000
MIN_OVERLOAD_CLIENTS = 16  # two full batches of concurrent requests


@dataclass
class Tally:
    """Client-side outcomes of one phase."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ok: list[float] = field(default_factory=list)
    missing_retry_after: int = 0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def count(self, *keys: str) -> int:
        return sum(self.statuses[k] for k in keys)

    @property
    def server_errors(self) -> int:
        return sum(v for k, v in self.statuses.items() if k.startswith("5") and k not in ("503",))


def payload(rng: random.Random) -> dict[str, Any]:
    pairs = rng.sample(PARITY_PAIRS, rng.choice((1, 1, 2, 4, 8)))
    return {"pairs": [{"sentence1": a, "sentence2": b} for a, b in pairs]}


async def one_request(client: httpx.AsyncClient, url: str, rng: random.Random, tally: Tally, timeout: float = CLIENT_TIMEOUT_S) -> None:
    started = time.perf_counter()
    try:
        r = await client.post(f"{url}/predict", json=payload(rng), timeout=timeout)
    except httpx.ConnectError:
        tally.statuses["refused"] += 1  # nothing was accepted
        return
    except httpx.TimeoutException:
        tally.statuses["timeout"] += 1
        return
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
        tally.statuses["reset"] += 1  # connection closed before a response
        return
    tally.statuses[str(r.status_code)] += 1
    if r.status_code == 200:
        tally.latencies_ok.append(time.perf_counter() - started)
    elif r.status_code == 429 and "retry-after" not in r.headers:
        tally.missing_retry_after += 1


async def closed_loop(url: str, concurrency: int, seconds: float, *, fresh_connections: bool = False, tally: Tally | None = None) -> Tally:
    """`concurrency` clients send back to back for `seconds` (and at most MAX_REQUESTS_PER_PHASE requests)."""
    tally = tally or Tally()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0 if fresh_connections else concurrency)

    async with httpx.AsyncClient(limits=limits) as client:

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline and tally.sent < MAX_REQUESTS_PER_PHASE:
                await one_request(client, url, rng, tally)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return tally


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(httpx.get(f"{url}/metrics", timeout=10).text)


class Report:
    """Collects checks and prints them; `ok` is False after any breach."""

    def __init__(self) -> None:
        self.ok = True

    def check(self, passed: bool, text: str) -> None:
        self.ok &= passed
        print(f"  [{'ok' if passed else 'BREACH'}] {text}", flush=True)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else (values[0] if values else 0.0)


async def find_saturation(url: str, seconds: float) -> tuple[int, float]:
    """The smallest concurrency reaching 90% of the best pairs/s seen (levels 1..64)."""
    results = []
    for concurrency in (1, 2, 4, 8, 16, 32, 64):
        before = scrape(url)
        started = time.monotonic()
        await closed_loop(url, concurrency, seconds)
        elapsed = time.monotonic() - started  # includes the in-flight tail after the deadline
        after = scrape(url)
        pairs = metric_delta(before, after, "paraserve_predictions_total")
        results.append((concurrency, pairs / elapsed))
        print(f"  concurrency {concurrency:3d}: {pairs / elapsed:8.1f} pairs/s", flush=True)
        if len(results) >= 3 and results[-1][1] < 1.05 * results[-2][1] and results[-2][1] < 1.05 * results[-3][1]:
            break
    best = max(rate for _, rate in results)
    saturation = next(c for c, rate in results if rate >= 0.9 * best)
    return saturation, best


async def overload(url: str, concurrency: int, seconds: float, report: Report) -> None:
    floor = MIN_OVERLOAD_CLIENTS
    print(f"\n== overload: {concurrency} concurrent clients (2x saturation, at least {floor}) for {seconds:.0f} s", flush=True)
    tally = Tally()
    early = max(3.0, min(10.0, seconds / 6))
    task = asyncio.ensure_future(closed_loop(url, concurrency, seconds, tally=tally))
    await asyncio.sleep(early)
    rss_early = metric_sum(scrape(url), "process_resident_memory_bytes")
    await task
    metrics = scrape(url)
    rss_end = metric_sum(metrics, "process_resident_memory_bytes")
    capacity = metrics.get(("paraserve_queue_capacity_pairs", ()), 256)
    batches = metric_sum(metrics, "paraserve_inference_duration_seconds_count") or 1
    batch_time = metric_sum(metrics, "paraserve_inference_duration_seconds_sum") / batches
    # A pair waits for at most the queue ahead of it (capacity / 8 batches) plus its own request's batches.
    bound = (math.ceil(capacity / 8) + 2) * batch_time * 1.5 + 1.0
    ok = tally.count("200")
    print(f"  sent {tally.sent}: 200={ok} 429={tally.count('429')} other={dict(tally.statuses)}", flush=True)
    report.check(tally.server_errors == 0, f"5xx responses: {tally.server_errors}")
    lost = tally.count("timeout", "reset", "refused")
    report.check(lost == 0, f"requests without an answer: {lost}")
    report.check(set(tally.statuses) <= {"200", "429"}, f"only 200 and 429 answers: {sorted(tally.statuses)}")
    report.check(tally.missing_retry_after == 0, f"429 without Retry-After: {tally.missing_retry_after}")
    if tally.latencies_ok:
        report.check(
            p99(tally.latencies_ok) <= bound,
            f"p99 of accepted requests {p99(tally.latencies_ok):.2f} s <= bound {bound:.2f} s "
            f"((capacity {capacity:.0f}/8 + 2) batches x {batch_time * 1000:.0f} ms x 1.5 + 1 s)",
        )
    growth = (rss_end - rss_early) / rss_early if rss_early else 0.0
    report.check(
        abs(growth) <= 0.10, f"RSS {rss_early / 1e6:.0f} MB after {early:.0f} s -> {rss_end / 1e6:.0f} MB at the end ({growth:+.1%})"
    )


async def clients_leave(url: str, concurrency: int, report: Report) -> None:
    print(f"\n== clients that leave: {concurrency * 4} requests abandoned after 20 ms under load", flush=True)
    background = asyncio.ensure_future(closed_loop(url, concurrency, 3.0))
    gone = Tally()
    async with httpx.AsyncClient() as client:
        rng = random.Random(7)
        await asyncio.gather(*(one_request(client, url, rng, gone, timeout=0.02) for _ in range(concurrency * 4)))
    await background
    deadline = time.monotonic() + 15
    depth = scrape(url).get(("paraserve_queue_depth_pairs", ()), -1)
    while depth != 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        depth = scrape(url).get(("paraserve_queue_depth_pairs", ()), -1)
    print(f"  abandoned: {dict(gone.statuses)}", flush=True)
    report.check(depth == 0, f"queue depth back to 0 after the load: {depth:.0f}")
    report.check(httpx.get(f"{url}/readyz", timeout=5).status_code == 200, "still ready")


def spawn(artifact: Path, queue_capacity: int | None, grace: float) -> LocalServer:
    settings = {"shutdown_grace_s": str(grace), **({"queue_capacity": str(queue_capacity)} if queue_capacity else {})}
    return start_server(artifact, **settings)


async def shutdown_under_load(artifact: Path, queue_capacity: int | None, concurrency: int, seconds: float, report: Report) -> None:
    grace = 30.0
    server = spawn(artifact, queue_capacity, grace)
    process, url = server.process, server.url
    print(f"\n== SIGTERM under load: {concurrency} clients, fresh connections, signal after {seconds:.0f} s", flush=True)
    tally = Tally()
    load = asyncio.ensure_future(closed_loop(url, concurrency, seconds * 2, fresh_connections=True, tally=tally))
    await asyncio.sleep(seconds)
    before_signal = tally.sent
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    readyz = "no answer"
    try:
        readyz = str(httpx.get(f"{url}/readyz", timeout=2).status_code)
    except httpx.HTTPError:
        readyz = "refused"  # the listening socket is already closed: equally not ready
    await load
    try:
        code = process.wait(timeout=grace + 15)
    except subprocess.TimeoutExpired:
        process.kill()
        code = None
    took = time.monotonic() - signalled
    answered, refused = tally.count("200"), tally.count("503", "refused", "reset")
    lost = tally.sent - answered - refused - tally.count("429")
    print(
        f"  sent {tally.sent} ({before_signal} before SIGTERM) / answered {answered} / refused {refused} "
        f"(503 {tally.count('503')}, connection refused {tally.count('refused')}, closed {tally.count('reset')}) "
        f"/ 429 {tally.count('429')} / lost {lost}",
        flush=True,
    )
    report.check(readyz in ("503", "refused"), f"/readyz right after SIGTERM: {readyz}")
    report.check(lost == 0 and tally.count("timeout") == 0, f"lost: {lost}")
    report.check(tally.server_errors == 0, f"5xx other than 503: {tally.server_errors}")
    report.check(code == 0 and took <= grace + 5, f"exit code {code} after {took:.1f} s (grace {grace:.0f} s)")


async def run(args: argparse.Namespace) -> bool:
    report = Report()
    server = spawn(args.spawn, args.queue_capacity, 30.0) if args.spawn else None
    url = server.url if server is not None else args.url
    try:
        print(f"== saturation probe against {url}", flush=True)
        saturation, best = await find_saturation(url, 1.0 if args.quick else 4.0)
        # At least two full batches of clients: with length buckets one client of single pairs can already keep the
        # model busy, and two such clients would never fill a batch or build a queue.
        heavy = max(2 * saturation, MIN_OVERLOAD_CLIENTS)
        print(f"  saturates at {saturation} concurrent clients ({best:.1f} pairs/s); overload with {heavy}", flush=True)
        await overload(url, heavy, 10.0 if args.quick else 60.0, report)
        await clients_leave(url, heavy // 2, report)
    finally:
        if server is not None:
            server.stop(timeout=60)
    if args.spawn:
        await shutdown_under_load(args.spawn, args.queue_capacity, heavy, 2.0 if args.quick else 5.0, report)
    print(f"\n{'PASS' if report.ok else 'FAIL'}: reliability checks", flush=True)
    return report.ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running service (SIGTERM phase skipped)")
    target.add_argument("--spawn", type=Path, help="artifact folder: start `python -m app` servers on 127.0.0.1 for every phase")
    parser.add_argument("--quick", action="store_true", help="10 s overload and short probes (CI)")
    parser.add_argument("--queue-capacity", type=int, default=None, help="with --spawn: PARASERVE_QUEUE_CAPACITY (small values force 429s)")
    args = parser.parse_args(argv)
    if args.url and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("--url must be a loopback address: load goes only to servers on this machine")
    return 0 if asyncio.run(run(args)) else 1


if __name__ == "__main__":
    sys.exit(main())
