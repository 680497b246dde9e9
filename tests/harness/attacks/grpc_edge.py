"""Attacks on the gRPC port (app/transport/grpc_front.py and app/protocols/v2_grpc.py), each bounded in time and count,
with an ordinary gRPC client beside it (`grpc_ordinary`). Raw HTTP/2 frames come from h2; calls from grpcio."""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections import Counter
from typing import Any

import grpc

from app.protocols.grpc_gen import open_inference_pb2 as pb
from model_build.parity_pairs import PARITY_PAIRS
from tests.harness.attacks.common import ATTACKERS, tally

INFER = "/inference.GRPCInferenceService/ModelInfer"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def infer_request(model: str, pairs: list[tuple[str, str]], **extra: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **extra)
    for name, column in (("text_a", [a for a, _ in pairs]), ("text_b", [b for _, b in pairs])):
        tensor = request.inputs.add(name=name, datatype="BYTES", shape=[len(column)])
        tensor.contents.bytes_contents.extend(s.encode() for s in column)
    return request


async def grpc_ordinary(target: str, model: str, stop: asyncio.Event, limit: int = 200_000) -> tuple[list[float], Counter[str]]:
    """One well-behaved gRPC client of single pairs, back to back until `stop` (new channel after a broken one)."""
    rng, latencies, codes = random.Random(13), [], Counter[str]()
    while not stop.is_set() and len(latencies) + sum(codes.values()) < limit:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary(
                INFER, request_serializer=pb.ModelInferRequest.SerializeToString, response_deserializer=pb.ModelInferResponse.FromString
            )
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    await call(infer_request(model, [rng.choice(PARITY_PAIRS)]), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                    await asyncio.sleep(0.05)
                    if exc.code() is grpc.StatusCode.UNAVAILABLE:
                        break  # a new channel
                    continue
                codes["OK"] += 1
                latencies.append(time.perf_counter() - started)
    return latencies, codes


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _headers_block(path: str = INFER) -> bytes:
    import hpack

    return hpack.Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "x"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )


async def _open(target: str, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = target.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port), local_addr=(source, 0))


async def _drain_frames(reader: asyncio.StreamReader, until: float) -> tuple[Counter[str], bool]:
    """Read frames until the connection closes or `until`: counts of RST_STREAM, trailers (HEADERS with END_STREAM) and
    GOAWAY, and whether the server closed the connection."""
    seen: Counter[str] = Counter()
    buffer = b""
    while time.monotonic() < until:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.05, until - time.monotonic()))
        except TimeoutError:
            break
        except ConnectionError:
            return seen, True
        if not chunk:
            return seen, True
        buffer += chunk
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            buffer = buffer[9 + length :]
            if kind == 0x3:
                seen["RST_STREAM"] += 1
            elif kind == 0x1 and flags & 0x1:
                seen["trailers"] += 1
            elif kind == 0x7:
                seen["GOAWAY"] += 1
    return seen, False


async def held_streams(target: str, connections: int, streams: int, hold: float) -> str:
    """`connections` connections (from the attackers' addresses) each opening `streams` ModelInfer streams that send
    HEADERS and nothing more, re-opened as the server resets them, for `hold` seconds."""
    block = _headers_block()
    totals: Counter[str] = Counter()

    async def one(i: int) -> None:
        reader, writer = await _open(target, ATTACKERS[i % len(ATTACKERS)])
        writer.write(PREFACE + _frame(0x4, 0, 0, b""))
        until = time.monotonic() + hold
        stream, opened = 1, 0
        while time.monotonic() < until and opened < 20 * streams:
            for _ in range(streams):
                writer.write(_frame(0x1, 0x4, stream, block))  # HEADERS, END_HEADERS, no END_STREAM: a request never sent
                stream += 2
                opened += 1
            await writer.drain()
            seen, closed = await _drain_frames(reader, min(until, time.monotonic() + hold / 4))
            totals.update(seen)
            if closed:
                totals["closed by the server"] += 1
                break
        totals["streams opened"] += opened
        writer.close()

    await asyncio.gather(*(one(i) for i in range(connections)))
    return tally(totals)


async def idle_connections(target: str, count: int, hold: float) -> str:
    """`count` connections that send the HTTP/2 preface and nothing more, from the attackers' addresses, held `hold` s."""
    opened: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    failed = 0
    for i in range(count):
        try:
            reader, writer = await _open(target, ATTACKERS[i % len(ATTACKERS)])
        except OSError:
            failed += 1
            continue
        writer.write(PREFACE + _frame(0x4, 0, 0, b""))
        opened.append(writer)
        readers.append(reader)
    results = await asyncio.gather(*(_drain_frames(r, time.monotonic() + hold) for r in readers))
    for writer in opened:
        writer.close()
    refused = sum(1 for seen, _ in results if seen["GOAWAY"])
    closed = sum(1 for _, c in results if c)
    return (
        f"{len(opened)} opened ({failed} failed to connect), {refused} answered GOAWAY, {closed} closed by the server within {hold:.0f} s"
    )


async def garbage_protobuf(target: str, seconds: float) -> str:
    """Calls whose message is random bytes, a truncated varint, or random fields, back to back from 2 clients."""
    rng = random.Random(17)
    bodies = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))) for _ in range(50)] + [b"\x0a\xff\xff\xff", b"\xff" * 11]
    codes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        async with grpc.aio.insecure_channel(target, options=[("grpc.primary_user_agent", f"attacker-{i}")]) as channel:
            call = channel.unary_unary(INFER)  # bytes in, bytes out
            n = 0
            while time.monotonic() < deadline and n < 50_000:
                try:
                    await call(bodies[(i + n) % len(bodies)], timeout=10)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                n += 1

    await asyncio.gather(*(client(i) for i in range(2)))
    return tally(codes)


async def output_flood(target: str, model: str, seconds: float, clients: int = 4, outputs: int = 100_000) -> str:
    """`clients` clients sending ModelInfer requests that ask for the `score` output `outputs` times (~900 KB each)."""
    request = infer_request(model, [PARITY_PAIRS[0]])
    request.outputs.extend(pb.ModelInferRequest.InferRequestedOutputTensor(name="score") for _ in range(outputs))
    raw = request.SerializeToString()
    codes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    async def client() -> None:
        async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 4 << 20)]) as channel:
            call = channel.unary_unary(INFER)
            n = 0
            while time.monotonic() < deadline and n < 10_000:
                try:
                    await call(raw, timeout=10)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                n += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return f"{len(raw) / 1e3:.0f} KB each: " + tally(codes)


async def empty_elements(target: str, model: str, seconds: float, elements: int = 250_000) -> str:
    """ModelInfer with `elements` empty BYTES elements in raw_input_contents (4 bytes each), back to back."""
    request = pb.ModelInferRequest(model_name=model)
    for name in ("text_a", "text_b"):
        request.inputs.add(name=name, datatype="BYTES", shape=[1])
        request.raw_input_contents.append(b"\x00\x00\x00\x00" * (elements // 2))
    raw = request.SerializeToString()
    codes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(INFER)
        while time.monotonic() < deadline and sum(codes.values()) < 10_000:
            try:
                await call(raw, timeout=10)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
    return tally(codes)


async def continuation_flood(target: str, seconds: float, connections: int = 2) -> tuple[str, float]:
    """HEADERS without END_HEADERS, then CONTINUATION frames of 16 KB for as long as the server reads them."""
    block = _frame(0x9, 0, 1, b"a" * 16_000)
    sent_total = 0.0
    outcomes: Counter[str] = Counter()

    async def one(i: int) -> None:
        nonlocal sent_total
        reader, writer = await _open(target, ATTACKERS[i % len(ATTACKERS)])
        writer.write(PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x1, 0, 1, _headers_block()))
        deadline = time.monotonic() + seconds
        sent = 0
        try:
            while time.monotonic() < deadline and sent < 2_000_000_000:
                writer.write(block * 16)
                await asyncio.wait_for(writer.drain(), max(0.1, deadline - time.monotonic()))
                sent += len(block) * 16
            outcomes["still open"] += 1
        except (TimeoutError, ConnectionError):
            outcomes["closed by the server" if writer.transport.is_closing() or reader.at_eof() else "blocked"] += 1
        finally:
            sent_total += sent
            writer.close()

    await asyncio.gather(*(one(i) for i in range(connections)))
    return f"{sent_total / 1e6:.1f} MB sent; " + tally(outcomes), sent_total
