"""The gRPC port's front (app/transport/grpc_front.py): the frame scanner that bounds a header block, the GOAWAY a
refused connection gets, and which client stands behind a relayed connection."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
from prometheus_client import CollectorRegistry

from app.shared.metrics import Metrics
from app.transport.grpc_front import PREFACE, FrameScanner, FrontLimits, GrpcFront, goaway


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def test_a_client_that_does_not_speak_http2_is_refused_at_its_first_bytes():
    assert FrameScanner(16_384).feed(b"GET / HTTP/1.1\r\n") == "bad_request"
    scanner = FrameScanner(16_384)
    assert scanner.feed(PREFACE[:10]) is None and not scanner.preface_seen  # a preface may arrive in pieces
    assert scanner.feed(PREFACE[10:]) is None and scanner.preface_seen


def test_a_header_block_continued_past_the_limit_closes_the_connection_whatever_the_read_sizes():
    stream = PREFACE + frame(0x4, 0, 0, b"") + frame(0x1, 0, 1, b"h" * 1000)
    stream += b"".join(frame(0x9, 0, 1, b"c" * 4000) for _ in range(4))  # 17,000 bytes of one header block
    for size in (1, 7, 9, 100, len(stream)):
        scanner = FrameScanner(16_384)
        results = [scanner.feed(stream[i : i + size]) for i in range(0, len(stream), size)]
        assert "headers_too_large" in results, size


def test_ordinary_frames_and_complete_header_blocks_pass():
    scanner = FrameScanner(16_384)
    data = PREFACE + frame(0x4, 0, 0, b"") + frame(0x1, 0x4, 1, b"h" * 10_000) + frame(0x0, 0x1, 1, b"d" * 60_000)
    data += frame(0x1, 0, 3, b"h" * 8000) + frame(0x9, 0x4, 3, b"c" * 8000)  # a block of exactly 16,000 bytes
    assert scanner.feed(data) is None


def test_a_refused_connection_gets_settings_and_a_goaway_that_names_the_reason():
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    events = client.receive_data(goaway("too many open gRPC connections from your address"))
    closed = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events)
    assert closed and closed[0].error_code == 0xB and closed[0].additional_data == b"too many open gRPC connections from your address"


def test_the_handlers_see_the_client_behind_each_relayed_connection():
    front = GrpcFront(FrontLimits(4, 2, 10.0, 16_384), Metrics(CollectorRegistry()))
    front.peers[51234] = "10.0.0.7"
    assert front.peer_of("ipv4:127.0.0.1:51234") == "10.0.0.7"
    assert front.peer_of("ipv4:127.0.0.1:4000") == "127.0.0.1"  # a direct loopback connection: its own address
    assert front.peer_of("ipv6:[::1]:4000") == "::1"
