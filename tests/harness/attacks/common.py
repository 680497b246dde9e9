"""What every attack of the reliability run shares: the attackers' addresses, raw connections, the ordinary client and
the /healthz probe that run beside each attack, and the report of checks.

Attackers connect from their own loopback addresses, the ordinary client and the probes from 127.0.0.1: per-client
limits (connections, queue share) then tell them apart as they would tell real hosts apart. Linux routes 127/8 to lo.
Every loop is bounded in time and in requests; traffic goes only to servers on this machine's loopback.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from model_build.parity_pairs import PARITY_PAIRS
from tests.harness.load import CLIENT_TIMEOUT_S, MAX_REQUESTS, percentile
from tests.harness.scrape import samples

LONG_TEXTS = ("." * 2000, "漢" * 2000, ("word " * 400).strip())

ATTACKERS = tuple(f"127.0.0.{i}" for i in range(2, 10))

PROBE_INTERVAL_S = 0.1

EDGE_P99_S = 1.0  # ordinary client and /healthz during the attacks that cost the model nothing

LOG_BYTES_PER_CLIENT_ERROR = 300  # one log line; a traceback was 452 KB


class Report:
    """Collects checks and prints them; `ok` is False after any breach."""

    def __init__(self) -> None:
        self.ok = True

    def check(self, passed: bool, text: str) -> None:
        self.ok &= passed
        print(f"  [{'ok' if passed else 'BREACH'}] {text}", flush=True)


@dataclass
class AttackRow:
    name: str
    what: str
    batch_s: float = 0.0  # mean forward time per batch during the attack
    rss_mb: tuple[float, float] = (0.0, 0.0)
    fds: tuple[float, float] = (0.0, 0.0)
    ordinary: tuple[float, float, int] = (0.0, 0.0, 0)  # p50, p99 (s), answered requests
    ordinary_ok: float = 1.0  # share of the ordinary client's requests answered 200
    healthz_p99: float = 0.0
    log_bytes: int = -1  # server log written during the attack (-1: not known, --url)
    outcome: str = ""
    facts: dict[str, float] = field(default_factory=dict)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(httpx.get(f"{url}/metrics", timeout=10).text)


async def ordinary_client(url: str, stop: asyncio.Event) -> tuple[list[float], Counter[str]]:
    """One well-behaved client sending single pairs back to back until `stop`; latencies of its 200s, and its statuses."""
    rng, latencies, statuses = random.Random(11), [], Counter[str]()
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        while not stop.is_set() and len(latencies) < MAX_REQUESTS:
            a, b = rng.choice(PARITY_PAIRS)
            started = time.perf_counter()
            try:
                r = await client.post(f"{url}/predict", json={"pairs": [{"sentence1": a, "sentence2": b}]})
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            statuses[str(r.status_code)] += 1
            if r.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                await asyncio.sleep(0.05)
    return latencies, statuses


async def healthz_probe(url: str, stop: asyncio.Event) -> list[float]:
    """A liveness probe every PROBE_INTERVAL_S until `stop`: its latencies (a failed probe counts as CLIENT_TIMEOUT_S)."""
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set() and len(latencies) < MAX_REQUESTS:
            started = time.perf_counter()
            try:
                ok = (await client.get(f"{url}/healthz")).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started if ok else CLIENT_TIMEOUT_S)
            await asyncio.sleep(PROBE_INTERVAL_S)
    return latencies


async def raw_connection(url: str, source: str | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host.strip("[]"), int(port), local_addr=(source, 0) if source else None)


async def read_until_closed(reader: asyncio.StreamReader, limit: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(1 << 20), limit)
    except (TimeoutError, ConnectionError):
        return b""


def first_status(data: bytes) -> str:
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else ("closed" if not data else "?")


def tally(outcomes: Counter[str]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(outcomes.items()))


async def repeatedly(seconds: float, workers: int, attempt: Any) -> Counter[str]:
    """`workers` loops each running `attempt(deadline)` (one connection) again and again for `seconds`, at most 1,000 times."""
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        for _ in range(1000):
            if time.monotonic() >= deadline:
                return
            outcomes[await attempt(deadline)] += 1

    await asyncio.gather(*(loop() for _ in range(workers)))
    return outcomes


def p99(values: list[float]) -> float:
    return percentile(values, 99)
