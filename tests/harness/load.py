"""The one closed-loop load generator of the tests, benchmarks, reliability run and Ray e2e.

`clients` clients each send a request, wait for its answer, and send the next, for `seconds` (and at most
`max_requests` requests): the load a service sees from callers that wait for their answers. What a request holds
(`pick`: which pairs) and how it is sent (`send`: any protocol; it returns an outcome label such as "200", "429",
"reset") are the caller's; the loop counts outcomes, and the latency and pairs of the answers that came back 200
inside the measured window (after `warmup` seconds, before the end).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

Pair = tuple[str, str]
Send = Callable[[list[Pair]], Awaitable[str]]
Pick = Callable[[random.Random], list[Pair]]
CLIENT_TIMEOUT_S = 60.0  # generous: a request without an answer in a minute is "lost"
MAX_REQUESTS = 200_000


@dataclass
class Tally:
    """Outcomes of one load: every request's label, and the measured 200s' latencies and pairs."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ok: list[float] = field(default_factory=list)
    pairs_ok: int = 0
    missing_retry_after: int = 0
    seconds: float = 0.0  # the measured window

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def count(self, *keys: str) -> int:
        return sum(self.statuses[k] for k in keys)

    @property
    def server_errors(self) -> int:
        return sum(v for k, v in self.statuses.items() if k.startswith("5") and k != "503")

    @property
    def errors(self) -> int:
        return self.sent - self.count("200")

    def summary(self) -> dict[str, float]:
        """pairs/s over the measured window, p50/p99 latency of its 200s, requests and errors."""
        q = statistics.quantiles(self.latencies_ok, n=100) if len(self.latencies_ok) >= 2 else [float("nan")] * 99
        return {
            "pairs_per_s": self.pairs_ok / self.seconds if self.seconds else 0.0,
            "p50_s": q[49],
            "p99_s": q[98],
            "requests": len(self.latencies_ok),
            "errors": self.errors,
        }


def percentile(values: Sequence[float], p: int) -> float:
    if len(values) >= 2:
        return statistics.quantiles(values, n=100)[p - 1]
    return values[0] if values else 0.0


async def closed_loop(
    send: Send,
    pick: Pick,
    clients: int,
    seconds: float,
    *,
    warmup: float = 0.0,
    max_requests: int = MAX_REQUESTS,
    tally: Tally | None = None,
    seed: int = 0,
) -> Tally:
    """Run the load; returns (or fills) the tally."""
    tally = tally or Tally()
    start_measure = time.monotonic() + warmup
    stop = start_measure + seconds
    tally.seconds += seconds

    async def client(i: int) -> None:
        rng = random.Random(seed + i)
        while time.monotonic() < stop and tally.sent < max_requests:
            pairs = pick(rng)
            started = time.monotonic()
            outcome = await send(pairs)
            done = time.monotonic()
            tally.statuses[outcome] += 1
            if outcome == "200" and start_measure <= started and done <= stop:
                tally.latencies_ok.append(done - started)
                tally.pairs_ok += len(pairs)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return tally


def mixed(pairs: Sequence[Pair]) -> Pick:
    """1-8 consecutive pairs per request, half of them single pairs: the benchmarks' and the issues' load."""

    def pick(rng: random.Random) -> list[Pair]:
        n = 1 if rng.random() < 0.5 else rng.randint(2, 8)
        first = rng.randrange(len(pairs))
        return [pairs[(first + k) % len(pairs)] for k in range(n)]

    return pick


def sampled(pairs: Sequence[Pair], sizes: Sequence[int] = (1, 1, 2, 4, 8)) -> Pick:
    """A random sample of `pairs` of one of `sizes` per request (the reliability run's load)."""
    return lambda rng: rng.sample(list(pairs), rng.choice(sizes))


def predict_sender(
    client: httpx.AsyncClient, url: str, *, tally: Tally | None = None, timeout: float = CLIENT_TIMEOUT_S, **extra: Any
) -> Send:
    """POST /predict, the outcome as a label: the status code, or what happened to a request without one."""

    async def send(pairs: list[Pair]) -> str:
        body = {"pairs": [{"sentence1": a, "sentence2": b} for a, b in pairs], **extra}
        try:
            r = await client.post(f"{url}/predict", json=body, timeout=timeout)
        except httpx.ConnectError:
            return "refused"  # nothing was accepted
        except httpx.TimeoutException:
            return "timeout"
        except httpx.WriteError:
            return "write failed"  # closed while the request was still being sent: not a full request
        except (httpx.RemoteProtocolError, httpx.ReadError):
            return "reset"  # sent in full, then closed (or reset) without a response
        if r.status_code == 429 and "retry-after" not in r.headers and tally is not None:
            tally.missing_retry_after += 1
        return str(r.status_code)

    return send


async def http_load(
    url: str, pick: Pick, clients: int, seconds: float, *, fresh_connections: bool = False, warmup: float = 0.0, tally: Tally | None = None
) -> Tally:
    """The load over POST /predict with httpx (one connection per client; new ones each request if `fresh_connections`)."""
    tally = tally or Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0 if fresh_connections else clients)
    async with httpx.AsyncClient(limits=limits) as client:
        return await closed_loop(predict_sender(client, url, tally=tally), pick, clients, seconds, warmup=warmup, tally=tally)
