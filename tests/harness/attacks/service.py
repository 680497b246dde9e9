"""The reliability run's service-level phases: the saturation probe, overload, clients that leave, and SIGTERM under
load, on the one load generator (tests/harness/load.py)."""

from __future__ import annotations

import asyncio
import math
import random
import signal
import subprocess
import time
from pathlib import Path

import httpx

from model_build.parity_pairs import PARITY_PAIRS
from tests.harness.attacks.common import Report, p99, scrape
from tests.harness.load import Tally, http_load, predict_sender, sampled
from tests.harness.scrape import gauge, metric_delta, metric_sum
from tests.harness.server import LocalServer, free_port, start_server

LOAD = sampled(PARITY_PAIRS)  # 1, 1, 2, 4 or 8 parity pairs per request
MIN_OVERLOAD_CLIENTS = 16  # two full batches of concurrent requests


async def find_saturation(url: str, seconds: float) -> tuple[int, float]:
    """The smallest concurrency reaching 90% of the best pairs/s seen (levels 1..64)."""
    results = []
    for concurrency in (1, 2, 4, 8, 16, 32, 64):
        before = scrape(url)
        started = time.monotonic()
        await http_load(url, LOAD, concurrency, seconds)
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
    task = asyncio.ensure_future(http_load(url, LOAD, concurrency, seconds, tally=tally))
    await asyncio.sleep(early)
    rss_early = metric_sum(scrape(url), "process_resident_memory_bytes")
    await task
    metrics = scrape(url)
    rss_end = metric_sum(metrics, "process_resident_memory_bytes")
    capacity = gauge(metrics, "paraserve_queue_capacity_pairs")
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
    background = asyncio.ensure_future(http_load(url, LOAD, concurrency, 3.0))
    gone = Tally()
    async with httpx.AsyncClient() as client:
        rng = random.Random(7)
        send = predict_sender(client, url, timeout=0.02)
        for outcome in await asyncio.gather(*(send(LOAD(rng)) for _ in range(concurrency * 4))):
            gone.statuses[outcome] += 1
    await background
    deadline = time.monotonic() + 15
    depth = gauge(scrape(url), "paraserve_queue_depth_pairs")
    while depth != 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        depth = gauge(scrape(url), "paraserve_queue_depth_pairs")
    print(f"  abandoned: {dict(gone.statuses)}", flush=True)
    report.check(depth == 0, f"queue depth back to 0 after the load: {depth:.0f}")
    report.check(httpx.get(f"{url}/readyz", timeout=5).status_code == 200, "still ready")


def spawn(artifact: Path, queue_capacity: int | None, grace: float, *, quick: bool = False, log_file: Path | None = None) -> LocalServer:
    settings = {"shutdown_grace_s": str(grace), **({"queue_capacity": str(queue_capacity)} if queue_capacity else {})}
    if quick:  # shorter connection timeouts and fewer slots, so the slow-connection attacks end sooner; the logic is the same
        settings.update(
            header_timeout_s="2", body_timeout_s="4", body_rate_grace_s="2", max_connections="300", max_connections_per_client="100"
        )
    return start_server(artifact, log_file=log_file, grpc_port=str(free_port()), **settings)


async def shutdown_under_load(
    artifact: Path, queue_capacity: int | None, concurrency: int, seconds: float, report: Report, log_file: Path
) -> None:
    grace = 30.0
    server = start_server(
        artifact, log_file=log_file, env={"PARASERVE_LOG_LEVEL": "info"}, shutdown_grace_s=str(grace),
        **({"queue_capacity": str(queue_capacity)} if queue_capacity else {}),
    )  # fmt: skip
    process, url = server.process, server.url
    print(f"\n== SIGTERM under load: {concurrency} clients, fresh connections, signal after {seconds:.0f} s", flush=True)
    tally = Tally()
    load = asyncio.ensure_future(http_load(url, LOAD, concurrency, seconds * 2, fresh_connections=True, tally=tally))
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
    answered, refused = tally.count("200"), tally.count("503", "refused", "write failed")
    resets = tally.count("reset")
    lost = tally.sent - answered - refused - resets - tally.count("429")
    drain = [line for line in log_file.read_text(errors="replace").splitlines() if "left unanswered" in line]
    unanswered = int(drain[-1].split(" accepted request(s) left unanswered")[0].rsplit(",", 1)[1]) if drain else -1
    print(
        f"  sent {tally.sent} ({before_signal} before SIGTERM) / answered 200: {answered} / refused {refused} "
        f"(503 {tally.count('503')}, connection refused {tally.count('refused')}, closed while sending {tally.count('write failed')}) "
        f"/ 429 {tally.count('429')} / lost {lost}",
        flush=True,
    )
    print(f"  client side: {resets} request(s) sent in full and then reset without an answer", flush=True)
    print(f"  server side: {drain[-1].split(' app.transport.server: ')[-1] if drain else 'no drain line in the log'}", flush=True)
    report.check(readyz in ("503", "refused"), f"/readyz right after SIGTERM: {readyz}")
    report.check(lost == 0 and tally.count("timeout") == 0, f"lost: {lost}")
    report.check(unanswered == 0, f"requests the server accepted and left unanswered (its own count): {unanswered}")
    report.check(tally.server_errors == 0, f"5xx other than 503: {tally.server_errors}")
    report.check(code == 0 and took <= grace + 5, f"exit code {code} after {took:.1f} s (grace {grace:.0f} s)")
