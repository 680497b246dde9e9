#!/usr/bin/env python3
"""Reliability under abuse: 2x overload, clients that leave, hostile clients, SIGTERM under load. Exits 1 on a breach.

    python scripts/reliability.py --spawn ARTIFACT_DIR [--quick] [--queue-capacity N]   # starts its own servers
    python scripts/reliability.py --url http://127.0.0.1:8000 [--quick]                # no SIGTERM phase

The hostile-client phase runs each attack of issue 14 (long texts, pipelining without reading, huge headers,
silent and slowloris connections, half-sent bodies, a connection flood) for a bounded time while one ordinary
client keeps sending single pairs, and prints a table: the server's RSS and open fds before and after, the
ordinary client's p50/p99 during, and what the server answered or closed.

Every loop is bounded in time and in requests; traffic goes only to the given URL or to servers on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
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
RSS_ALLOWANCE_MB = 300  # over the first attack's starting RSS, for every attack (was +3,900 MB for one long-text request)
TOKENIZE_LONG_PAIR_S = 0.005  # a pair of two 2,000-character sentences: 2-4 ms measured (encoding.PairEncoder)
OTHER_ATTACK_P99_S = 1.0  # connection-level attacks cost the model nothing


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
    except httpx.WriteError:
        tally.statuses["write failed"] += 1  # closed while the request was still being sent: not a full request
        return
    except (httpx.RemoteProtocolError, httpx.ReadError):
        tally.statuses["reset"] += 1  # sent in full, then closed (or reset) without a response
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


def spawn(artifact: Path, queue_capacity: int | None, grace: float, *, quick: bool = False, log_file: Path | None = None) -> LocalServer:
    settings = {"shutdown_grace_s": str(grace), **({"queue_capacity": str(queue_capacity)} if queue_capacity else {})}
    if quick:  # shorter connection timeouts and fewer slots, so the slow-connection attacks end sooner; the logic is the same
        settings.update(
            header_timeout_s="2", body_timeout_s="4", body_rate_grace_s="2", max_connections="300", max_connections_per_client="100"
        )
    return start_server(artifact, log_file=log_file, **settings)


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
    answered, refused = tally.count("200"), tally.count("503", "refused", "write failed")
    resets = tally.count("reset")
    lost = tally.sent - answered - refused - resets - tally.count("429")
    drain = [line for line in log_file.read_text(errors="replace").splitlines() if "drain:" in line]
    unanswered = int(drain[-1].split(" accepted request(s) left unanswered")[0].rsplit(",", 1)[1]) if drain else -1
    print(
        f"  sent {tally.sent} ({before_signal} before SIGTERM) / answered 200: {answered} / refused {refused} "
        f"(503 {tally.count('503')}, connection refused {tally.count('refused')}, closed while sending {tally.count('write failed')}) "
        f"/ 429 {tally.count('429')} / lost {lost}",
        flush=True,
    )
    print(f"  client side: {resets} request(s) sent in full and then reset without an answer", flush=True)
    print(f"  server side: {drain[-1].split(' app.protocol: ')[-1] if drain else 'no drain line in the log'}", flush=True)
    report.check(readyz in ("503", "refused"), f"/readyz right after SIGTERM: {readyz}")
    report.check(lost == 0 and tally.count("timeout") == 0, f"lost: {lost}")
    report.check(unanswered == 0, f"requests the server accepted and left unanswered (its own count): {unanswered}")
    report.check(tally.server_errors == 0, f"5xx other than 503: {tally.server_errors}")
    report.check(code == 0 and took <= grace + 5, f"exit code {code} after {took:.1f} s (grace {grace:.0f} s)")


# ---- hostile clients ---------------------------------------------------------------------------------------

LONG_TEXTS = ("." * 2000, "漢" * 2000, ("word " * 400).strip())
# Attackers connect from their own loopback addresses, the ordinary client and the probes from 127.0.0.1: per-client
# limits (connections, queue share) then tell them apart as they would tell real hosts apart. Linux routes 127/8 to lo.
ATTACKERS = tuple(f"127.0.0.{i}" for i in range(2, 10))
PROBE_INTERVAL_S = 0.1
EDGE_P99_S = 1.0  # ordinary client and /healthz during the attacks that cost the model nothing
LOG_BYTES_PER_CLIENT_ERROR = 300  # one log line; a traceback was 452 KB


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


async def ordinary_client(url: str, stop: asyncio.Event) -> tuple[list[float], Counter[str]]:
    """One well-behaved client sending single pairs back to back until `stop`; latencies of its 200s, and its statuses."""
    rng, latencies, statuses = random.Random(11), [], Counter[str]()
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        while not stop.is_set() and len(latencies) < MAX_REQUESTS_PER_PHASE:
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
        while not stop.is_set() and len(latencies) < MAX_REQUESTS_PER_PHASE:
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


async def long_texts(url: str, seconds: float, pairs: int, clients: int = 3) -> str:
    """`clients` clients (each from its own address) sending `pairs` pairs of 2,000-character sentences, back to back."""
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    async def one(i: int) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=ATTACKERS[i % len(ATTACKERS)])
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, transport=transport) as client:
            n = 0
            while time.monotonic() < deadline and n < 500:
                text = LONG_TEXTS[(i + n) % len(LONG_TEXTS)]
                r = await client.post(f"{url}/predict", json={"pairs": [{"sentence1": text, "sentence2": text}] * pairs})
                statuses[str(r.status_code)] += 1
                n += 1
                if r.status_code == 429:
                    await asyncio.sleep(0.01)

    await asyncio.gather(*(one(i) for i in range(clients)))
    return f"{clients} x {pairs} pairs/request: " + " ".join(f"{k}x{v}" for k, v in sorted(statuses.items()))


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


async def pipelining(url: str, seconds: float) -> str:
    """Ten sockets writing pipelined GET /healthz without reading a reply, reconnecting when closed."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 200
    sent = 0

    async def attempt(deadline: float) -> str:
        nonlocal sent
        _, writer = await raw_connection(url, ATTACKERS[0])
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                await asyncio.wait_for(writer.drain(), max(0.1, deadline - time.monotonic()))
                sent += len(request)
            return "open at the end"
        except (TimeoutError, ConnectionError):
            return "closed by the server" if writer.transport.is_closing() else "blocked (not read)"
        finally:
            writer.close()

    outcomes = await repeatedly(seconds, 10, attempt)
    return f"{sent / 1e6:.1f} MB sent; " + ", ".join(f"{k} {v}" for k, v in outcomes.items())


async def big_headers(url: str, seconds: float) -> str:
    """Four sockets each sending a header of up to 100 MB, reconnecting when closed."""
    chunk = b"a" * (1 << 20)

    async def attempt(deadline: float) -> str:
        reader, writer = await raw_connection(url, ATTACKERS[0])
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(100):
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), max(0.1, deadline - time.monotonic()))
        except (TimeoutError, ConnectionError):
            pass
        status = first_status(await read_until_closed(reader, 2))
        writer.close()
        return status

    return tally(await repeatedly(seconds, 4, attempt))


async def chunk_framing(url: str, seconds: float, chunks: int) -> str:
    """Three sockets each sending a chunked POST /predict of `chunks` one-byte chunks (6 bytes on the wire each)."""
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    block = b"1\r\n \r\n" * 10_000

    async def attempt(deadline: float) -> str:
        reader, writer = await raw_connection(url, ATTACKERS[0])
        try:
            writer.write(head)
            for _ in range(chunks // 10_000):
                writer.write(block)
                await asyncio.wait_for(writer.drain(), max(0.1, deadline - time.monotonic()))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        status = first_status(await read_until_closed(reader, 2))
        writer.close()
        return status

    return tally(await repeatedly(seconds, 3, attempt))


async def smuggling(url: str) -> str:
    """Content-Length with Transfer-Encoding, a second request hidden in the body; and HTTP/1.0 with Transfer-Encoding."""
    hidden = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + hidden
    both = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\ntransfer-encoding: chunked\r\n\r\n" % len(body) + body
    )
    old = b"POST /predict HTTP/1.0\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    answers = []
    for request in (both, old):
        reader, writer = await raw_connection(url, ATTACKERS[0])
        writer.write(request)
        data = b""
        while chunk := await read_until_closed(reader, 3):
            data += chunk
        writer.close()
        answers.append(f"{first_status(data)} ({data.count(b'HTTP/1.1 ')} response(s), {'closed' if reader.at_eof() else 'open'})")
    return f"CL+TE: {answers[0]}; HTTP/1.0+TE: {answers[1]}"


async def method_labels(url: str, count: int, size: int) -> tuple[str, float]:
    """`count` requests with random methods of `size` letters (4 keep-alive sockets); /metrics bytes after."""
    rng = random.Random(5)
    statuses: Counter[str] = Counter()
    before = len(httpx.get(f"{url}/metrics", timeout=10).content)

    async def worker(n: int) -> None:
        reader, writer = await raw_connection(url, ATTACKERS[1])
        try:
            for _ in range(n):
                method = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(size)).encode()
                writer.write(method + b" /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                statuses[first_status(head)] += 1
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, StopIteration):
            statuses["closed"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(count // 4) for _ in range(4)))
    after = len(httpx.get(f"{url}/metrics", timeout=10).content)
    return f"{tally(statuses)}; /metrics {before / 1e3:.0f} KB -> {after / 1e3:.0f} KB", after


V2_BAD_BODIES = (
    ("nested 5,000 deep", '{"inputs":[{"name":"text_a","shape":[1],"datatype":"BYTES","data":%s},'
     '{"name":"text_b","shape":[1],"datatype":"BYTES","data":["x"]}]}' % ("[" * 5000 + "]" * 5000)),
    ("a 5,000-digit integer", '{"inputs":[{"name":"text_a","shape":[%s],"datatype":"BYTES","data":["x"]},'
     '{"name":"text_b","shape":[1],"datatype":"BYTES","data":["x"]}]}' % ("9" * 5000)),
    ("a lone surrogate", '{"inputs":[{"name":"text_a","shape":[1],"datatype":"BYTES","data":["\\ud800"]},'
     '{"name":"text_b","shape":[1],"datatype":"BYTES","data":["x"]}]}'),
)  # fmt: skip


async def v2_errors(url: str, seconds: float, model: str) -> tuple[str, int]:
    """Two clients sending the v2 bodies that once answered 500 with a traceback each, back to back."""
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    transport = httpx.AsyncHTTPTransport(local_address=ATTACKERS[2])
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, transport=transport) as client:

        async def one(i: int) -> None:
            n = 0
            while time.monotonic() < deadline and n < 20_000:
                _, body = V2_BAD_BODIES[(i + n) % len(V2_BAD_BODIES)]
                r = await client.post(f"{url}/v2/models/{model}/infer", content=body)
                statuses[str(r.status_code)] += 1
                n += 1

        await asyncio.gather(*(one(i) for i in range(2)))
    return tally(statuses), sum(v for k, v in statuses.items() if k.startswith("5"))


async def drip(url: str, count: int, wait: float) -> tuple[str, float]:
    """`count` POSTs announcing 1,000 bytes and sending one every 5 s, held until the server closes them (or `wait`)."""
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    started = time.monotonic()

    async def one() -> tuple[str, float]:
        try:
            reader, writer = await raw_connection(url, ATTACKERS[3])
        except OSError:
            return "refused", 0.0
        writer.write(head + b"{")
        deadline = time.monotonic() + wait
        status = "still open"
        try:
            while time.monotonic() < deadline:
                data = await read_until_closed(reader, min(5.0, max(0.01, deadline - time.monotonic())))
                if data or reader.at_eof():
                    status = first_status(data)
                    break
                writer.write(b" ")
                await writer.drain()
        except ConnectionError:
            status = "closed"
        finally:
            writer.close()
        return status, time.monotonic() - started

    results = await asyncio.gather(*(one() for _ in range(count)))
    held = max((t for s, t in results if s != "still open"), default=0.0)
    statuses = Counter(s for s, _ in results)
    return f"{tally(statuses)}; the last closed after {held:.1f} s", float(statuses["still open"])


async def fairness(url: str, seconds: float, pairs: int) -> str:
    """Eight clients, each from its own address, sending `pairs` long-text pairs per request back to back."""
    return await long_texts(url, seconds, pairs, clients=len(ATTACKERS))


async def silent(url: str, count: int, wait: float) -> str:
    """`count` connections that never send a byte, held until the server closes them (or `wait` runs out)."""
    connections = [await raw_connection(url, ATTACKERS[4]) for _ in range(count)]
    answers = await asyncio.gather(*(read_until_closed(r, wait) for r, _ in connections))
    for _, writer in connections:
        writer.close()
    closed = sum(1 for (r, _), a in zip(connections, answers, strict=True) if r.at_eof())
    return f"{closed} of {count} closed by the server, {sum(1 for a in answers if a)} with a response"


async def slowloris(url: str, count: int, wait: float) -> str:
    """`count` connections sending their headers one line a second."""

    async def one() -> str:
        reader, writer = await raw_connection(url, ATTACKERS[5])
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline and not reader.at_eof():
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(65536), 1.0)
                    if data or reader.at_eof():
                        return first_status(data)
                except TimeoutError:
                    continue
        except ConnectionError:
            return "closed"
        finally:
            writer.close()
        return "still open"

    results = Counter(await asyncio.gather(*(one() for _ in range(count))))
    return " ".join(f"{k}x{v}" for k, v in results.items())


async def half_bodies(url: str, count: int, wait: float) -> str:
    """`count` POSTs that announce 2 KB and send half."""

    async def one() -> str:
        reader, writer = await raw_connection(url, ATTACKERS[6])
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 2048\r\n\r\n"
        writer.write(head + b"{" + b" " * 1023)
        data = await read_until_closed(reader, wait)
        writer.close()
        return first_status(data)

    results = Counter(await asyncio.gather(*(one() for _ in range(count))))
    return " ".join(f"{k}x{v}" for k, v in results.items())


async def flood(url: str, count: int, wait: float, per_address: int) -> str:
    """`count` connections opened at once and held (more than max_connections), from as many addresses as it takes to
    stay within the per-client limit, so the total limit is what refuses them."""
    connections = []
    for i in range(count):
        try:
            connections.append(await raw_connection(url, ATTACKERS[(i // per_address) % len(ATTACKERS)]))
        except OSError:
            break
    answers = await asyncio.gather(*(read_until_closed(r, wait) for r, _ in connections))
    for _, writer in connections:
        writer.close()
    refused = sum(1 for a in answers if first_status(a) == "503" and b"too_many_connections" in a)
    return f"{len(connections)} opened, {refused} answered 503 too_many_connections"


ATTACK_NAMES = ("long-texts", "queue-fairness", "chunk-framing", "smuggling", "method-labels", "v2-errors", "drip", "pipelining",
                "big-headers", "silent", "slowloris", "half-bodies", "flood")  # fmt: skip


async def hostile_clients(
    url: str, quick: bool, report: Report, log_file: Path | None, only: frozenset[str] = frozenset()
) -> dict[str, AttackRow]:
    """Each attack (or those in `only`) with an ordinary client and a /healthz probe alongside; checks into `report`."""
    shown = httpx.get(f"{url}/model", timeout=10)
    if shown.status_code != 200:
        print(f"  GET /model answered {shown.status_code}: the hostile phase needs the settings (API key?)", flush=True)
        report.check(False, "hostile phase: GET /model readable")
        return {}
    settings, model = shown.json()["settings"], shown.json()["name"]
    header_timeout, max_connections = settings["header_timeout_s"], settings["max_connections"]
    per_client = settings["max_connections_per_client"]
    hold = header_timeout + 3  # every slow connection must be closed by then
    drip_hold = settings["body_rate_grace_s"] + 3  # a dripped body falls under the minimum rate after the grace
    # The 64 pairs, or what a small test queue can admit at all (CI runs with capacity 32).
    capacity = int(scrape(url).get(("paraserve_queue_capacity_pairs", ()), 256))
    long_pairs = min(64, capacity // 2)
    seconds = 5.0 if quick else 20.0
    n = 50 if quick else 200
    drips = 200 if quick else 1000
    attacks: list[tuple[str, str, Any]] = [
        ("long texts", f"3 clients x {long_pairs} pairs of 2,000 chars", lambda: long_texts(url, seconds, long_pairs)),
        ("queue fairness", f"8 clients x {long_pairs} pairs of 2,000 chars", lambda: fairness(url, seconds, long_pairs)),
        ("chunk framing", "3 sockets, chunked bodies of 300,000 one-byte chunks", lambda: chunk_framing(url, seconds, 300_000)),
        ("smuggling", "Content-Length + Transfer-Encoding; HTTP/1.0 + TE", lambda: smuggling(url)),
        ("method labels", "4,000 requests with random 12 KB methods", lambda: method_labels(url, 4000, 12_000)),
        ("v2 errors", "2 clients: v2 bodies nested 5,000 deep, 5,000-digit ints, lone surrogates", lambda: v2_errors(url, seconds, model)),
        ("drip", f"{drips} POSTs sending a byte every 5 s", lambda: drip(url, drips, drip_hold + 5)),
        ("pipelining", "10 sockets pipelining GET /healthz, never reading", lambda: pipelining(url, seconds)),
        ("big headers", "4 sockets, 100 MB header each", lambda: big_headers(url, seconds)),
        ("silent", f"{n} connections that never send", lambda: silent(url, n, hold)),
        ("slowloris", f"{n} connections, one header line a second", lambda: slowloris(url, n, hold)),
        ("half bodies", f"{n} POSTs sending half their body", lambda: half_bodies(url, n, hold)),
        ("flood", f"{max_connections + 100} connections at once", lambda: flood(url, max_connections + 100, hold, per_client)),
    ]
    print("\n== hostile clients: each attack bounded in time; an ordinary client of single pairs and a /healthz probe alongside")
    rows: dict[str, AttackRow] = {}
    for name, what, attack in attacks:
        if only and name.replace(" ", "-") not in only:
            continue
        before = scrape(url)
        log_before = log_file.stat().st_size if log_file is not None and log_file.exists() else None
        stop = asyncio.Event()
        ordinary = asyncio.ensure_future(ordinary_client(url, stop))
        probe = asyncio.ensure_future(healthz_probe(url, stop))
        result = await attack()
        stop.set()
        latencies, statuses = await ordinary
        probes = await probe
        await asyncio.sleep(0.5)
        after = scrape(url)
        row = AttackRow(name, what)
        row.outcome, extra = (result, None) if isinstance(result, str) else result
        if extra is not None:
            row.facts["value"] = extra
        row.rss_mb = (metric_sum(before, "process_resident_memory_bytes") / 1e6, metric_sum(after, "process_resident_memory_bytes") / 1e6)
        row.fds = (metric_sum(before, "process_open_fds"), metric_sum(after, "process_open_fds"))
        row.ordinary = (statistics.median(latencies) if latencies else float("nan"), p99(latencies), len(latencies))
        row.ordinary_ok = statuses["200"] / max(1, sum(statuses.values()))
        row.healthz_p99 = p99(probes)
        if log_before is not None and log_file is not None:
            row.log_bytes = log_file.stat().st_size - log_before
        batches = metric_delta(before, after, "paraserve_inference_duration_seconds_count")
        row.batch_s = metric_delta(before, after, "paraserve_inference_duration_seconds_sum") / batches if batches else 0.0
        rows[name] = row
    print(f"  {'attack':15s} {'RSS MB before->after':>21s} {'fds':>11s} {'ordinary p50/p99 (n, 200s)':>32s} {'healthz p99':>11s}  outcome")
    for r in rows.values():
        print(
            f"  {r.name:15s} {r.rss_mb[0]:9.0f} -> {r.rss_mb[1]:6.0f} {r.fds[0]:4.0f} -> {r.fds[1]:4.0f} "
            f"{r.ordinary[0] * 1000:8.0f} / {r.ordinary[1] * 1000:5.0f} ms ({r.ordinary[2]:4d}, {r.ordinary_ok:4.0%}) "
            f"{r.healthz_p99 * 1000:8.0f} ms  {r.outcome}"
            + (f"; log {r.log_bytes} bytes" if r.log_bytes >= 0 and r.name == "v2 errors" else "")
        )
    if not rows:
        return rows
    first = next(iter(rows.values()))
    worst_rss = max(r.rss_mb[1] for r in rows.values())
    report.check(
        worst_rss <= first.rss_mb[0] + RSS_ALLOWANCE_MB,
        f"RSS stays within +{RSS_ALLOWANCE_MB} MB: {first.rss_mb[0]:.0f} -> at most {worst_rss:.0f} MB",
    )
    last = list(rows.values())[-1]
    report.check(
        last.fds[1] <= first.fds[0] + 10, f"open fds back to the baseline after the attacks: {first.fds[0]:.0f} -> {last.fds[1]:.0f}"
    )
    # Long texts are legitimate, admitted work (2,000 characters is within the limits): an ordinary request waits
    # for what was admitted ahead of it, no more. That is the three attackers' pairs (at most the queue capacity) in
    # full 128-token batches shared by the workers, plus their tokenization, plus its own batch; x1.5 and +1 s slack.
    gauges = scrape(url)
    workers = gauges.get(("paraserve_workers", ()), 1) or 1
    if long_row := rows.get("long texts"):
        ahead = min(capacity, 3 * long_pairs)
        long_bound = (math.ceil(ahead / 8) / workers + 2) * long_row.batch_s * 1.5 + 3 * long_pairs * TOKENIZE_LONG_PAIR_S + 1.0
        report.check(
            long_row.ordinary[1] <= long_bound,
            f"ordinary p99 during long texts {long_row.ordinary[1]:.2f} s <= {long_bound:.2f} s ((ceil({ahead:.0f} pairs ahead / 8) / "
            f"{workers:.0f} workers + 2) batches x {long_row.batch_s * 1000:.0f} ms x 1.5 + tokenizing {3 * long_pairs} long pairs + 1 s)",
        )
    if fair := rows.get("queue fairness"):
        report.check(
            fair.ordinary_ok >= 0.8, f"queue fairness: the ordinary client got {fair.ordinary_ok:.0%} 200s (>= 80%) beside 8 heavy clients"
        )
    for r in rows.values():
        if r.name not in ("long texts", "queue fairness"):  # the attacks that cost the model nothing
            report.check(
                r.ordinary[1] <= EDGE_P99_S and r.healthz_p99 <= EDGE_P99_S and r.ordinary[2] > 0,
                f"{r.name}: ordinary p99 {r.ordinary[1] * 1000:.0f} ms, /healthz p99 {r.healthz_p99 * 1000:.0f} ms (<= {EDGE_P99_S:g} s)",
            )
    if smuggled := rows.get("smuggling"):
        both, old = smuggled.outcome.split(";")
        report.check("400 (1 response(s), closed)" in both, f"Content-Length with Transfer-Encoding: {both.split(': ', 1)[1]}")
        report.check("400 (1 response(s), closed)" in old, f"HTTP/1.0 with Transfer-Encoding: {old.split(': ', 1)[1]}")
    if labels := rows.get("method labels"):
        report.check(labels.facts["value"] < 100_000, f"/metrics after random methods: {labels.facts['value'] / 1e3:.0f} KB (< 100 KB)")
    if v2 := rows.get("v2 errors"):
        report.check(v2.facts["value"] == 0 and "400" in v2.outcome, f"v2 errors: {v2.outcome} (no 5xx)")
        if v2.log_bytes >= 0:
            requests = sum(int(part.split(" x")[1]) for part in v2.outcome.split(", "))
            per_request = v2.log_bytes / max(1, requests)
            report.check(
                per_request <= LOG_BYTES_PER_CLIENT_ERROR,
                f"v2 errors: {v2.log_bytes} bytes of server log for {requests} bad requests ({per_request:.1f} per request, "
                f"<= {LOG_BYTES_PER_CLIENT_ERROR}: one line at most, never a traceback)",
            )
    if dripped := rows.get("drip"):
        report.check(
            dripped.facts["value"] == 0, f"drip: every connection closed by the server within {drip_hold + 5:.0f} s ({dripped.outcome})"
        )
    for name in ("silent", "slowloris", "half bodies"):
        if name in rows:
            report.check("still open" not in rows[name].outcome, f"{name}: every connection closed by the server within {hold:.0f} s")
    if flooded := rows.get("flood"):
        report.check(
            "503" in flooded.outcome and not flooded.outcome.endswith(" 0 answered 503 too_many_connections"), f"flood: {flooded.outcome}"
        )
    end = scrape(url)
    closes = {k[1][0][1]: v for k, v in end.items() if k[0] == "paraserve_connections_closed_total" and v}
    print(f"  server-side closes by reason: {closes}", flush=True)
    return rows


async def run(args: argparse.Namespace) -> bool:
    report = Report()
    logs = Path(tempfile.mkdtemp(prefix="paraserve-reliability-"))
    server = spawn(args.spawn, args.queue_capacity, 30.0, quick=args.quick, log_file=logs / "hostile.log") if args.spawn else None
    url = server.url if server is not None else args.url
    only = frozenset(args.attack or ())
    heavy = MIN_OVERLOAD_CLIENTS
    try:
        if not only:
            print(f"== saturation probe against {url}", flush=True)
            saturation, best = await find_saturation(url, 1.0 if args.quick else 4.0)
            # At least two full batches of clients: with length buckets one client of single pairs can already keep the
            # model busy, and two such clients would never fill a batch or build a queue.
            heavy = max(2 * saturation, MIN_OVERLOAD_CLIENTS)
            print(f"  saturates at {saturation} concurrent clients ({best:.1f} pairs/s); overload with {heavy}", flush=True)
            await overload(url, heavy, 10.0 if args.quick else 60.0, report)
            await clients_leave(url, heavy // 2, report)
        await hostile_clients(url, args.quick, report, logs / "hostile.log" if server is not None else None, only)
    finally:
        if server is not None:
            server.stop(timeout=60)
    if args.spawn and not only:
        await shutdown_under_load(args.spawn, args.queue_capacity, heavy, 2.0 if args.quick else 5.0, report, logs / "sigterm.log")
    print(f"server logs: {logs}", flush=True)
    print(f"\n{'PASS' if report.ok else 'FAIL'}: reliability checks", flush=True)
    return report.ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running service (SIGTERM phase skipped)")
    target.add_argument("--spawn", type=Path, help="artifact folder: start `python -m app` servers on 127.0.0.1 for every phase")
    parser.add_argument("--quick", action="store_true", help="10 s overload and short probes (CI)")
    parser.add_argument("--queue-capacity", type=int, default=None, help="with --spawn: PARASERVE_QUEUE_CAPACITY (small values force 429s)")
    parser.add_argument(
        "--attack", action="append", choices=ATTACK_NAMES, help="run only this hostile-client attack (repeatable; skips the other phases)"
    )
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the connection flood needs more sockets than 1,024
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    if args.url and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("--url must be a loopback address: load goes only to servers on this machine")
    return 0 if asyncio.run(run(args)) else 1


if __name__ == "__main__":
    sys.exit(main())
