"""Attacks on the HTTP edge (app/transport/http11.py): each bounded in time and count, each returning what the server
answered or closed, for scripts/reliability.py's table and checks and for the tests that reuse them."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import httpx

from tests.harness.attacks.common import (
    ATTACKERS,
    CLIENT_TIMEOUT_S,
    LONG_TEXTS,
    first_status,
    raw_connection,
    read_until_closed,
    repeatedly,
    tally,
)


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


REFUSED_AT_HEADERS = (
    b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 99999999\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
    b"POST /predict HTTP/1.0\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n",
)


async def refused_then_silent(url: str, count: int, linger: float) -> tuple[str, float]:
    """`count` connections (from 4 attacker addresses) each sending a request refused at its headers (413 by
    Content-Length, CL+TE 400, HTTP/1.0+TE 400), reading the answer, then holding the socket open and silent. After
    `linger` + 1 s each socket sends one byte: a server that closed it answers with a reset, one still holding it reads
    and drops the byte. Returns the outcome and how many the server still held."""
    writers, statuses = [], Counter[str]()
    for i in range(count):
        try:
            reader, writer = await raw_connection(url, ATTACKERS[i % 4])
        except OSError:
            statuses["refused"] += 1
            continue
        writer.write(REFUSED_AT_HEADERS[i % len(REFUSED_AT_HEADERS)])
        writers.append((reader, writer))
    answers = await asyncio.gather(*(read_until_closed(r, linger) for r, _ in writers))
    statuses.update(first_status(a) for a in answers)
    await asyncio.sleep(linger + 1.0)

    async def still_held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            writer.write(b"x")
            await writer.drain()
            await asyncio.wait_for(reader.read(1), 1.0)
        except (ConnectionError, OSError):
            return False  # reset: the server had closed it
        except TimeoutError:
            return True
        return False

    held = sum(await asyncio.gather(*(still_held(r, w) for r, w in writers)))
    for _, writer in writers:
        writer.close()
    return f"{tally(statuses)}; {held} still held by the server {linger + 1:.0f} s after the answers", float(held)
