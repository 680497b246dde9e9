"""The gRPC port's edge against a real server: held streams reset, connections capped per address, a silent
connection closed, a CONTINUATION flood cut, malformed and oversized messages refused as INVALID_ARGUMENT before any
work and without a log line, model-named methods behind the API key. The attacks are the reliability run's own
(tests/harness/attacks/grpc_edge.py), at test size."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from app.protocols.grpc_gen import open_inference_pb2 as pb
from model_build.parity_pairs import PARITY_PAIRS
from tests.harness.attacks.grpc_edge import (
    INFER,
    continuation_flood,
    empty_elements,
    garbage_protobuf,
    held_streams,
    idle_connections,
    infer_request,
    output_flood,
)
from tests.harness.scrape import metric_sum, samples
from tests.harness.server import LocalServer, free_port, start_server


@pytest.fixture(scope="module")
def edge(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, Path]]:
    log = tmp_path_factory.mktemp("grpc-edge") / "server.log"
    server = start_server(
        tiny_artifacts / "int8-calibrated",
        log_file=log,
        env={"PARASERVE_LOG_LEVEL": "info"},
        grpc_port=str(free_port()),
        body_timeout_s="1",
        header_timeout_s="1",
        grpc_max_connections_per_client="3",
    )
    try:
        yield server, log
    finally:
        assert server.stop(30) == 0


def refused(url: str, reason: str) -> float:
    return metric_sum(samples(httpx.get(f"{url}/metrics", timeout=10).text), "paraserve_grpc_refused_total", reason=reason)


def ordinary_call(target: str) -> pb.ModelInferResponse:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            INFER, request_serializer=pb.ModelInferRequest.SerializeToString, response_deserializer=pb.ModelInferResponse.FromString
        )
        return call(infer_request("tiny", [PARITY_PAIRS[0]]), timeout=30)


def test_a_stream_that_never_sends_its_request_is_reset_and_counted(edge):
    server, _ = edge
    before = refused(server.url, "request_timeout")
    outcome = asyncio.run(held_streams(server.grpc, connections=1, streams=3, hold=3.0))
    assert "trailers" in outcome  # grpc-status DEADLINE_EXCEEDED, then the stream's reset
    assert refused(server.url, "request_timeout") >= before + 3
    assert ordinary_call(server.grpc).model_name == "tiny"


def test_connections_are_capped_per_address_and_another_address_is_served(edge):
    server, _ = edge
    before = refused(server.url, "client_connections")
    outcome = asyncio.run(idle_connections(server.grpc, count=5, hold=0.5))  # round robin over 8 attacker addresses
    assert "0 answered GOAWAY" in outcome  # five addresses, one connection each: none over its cap of 3
    many = asyncio.run(_from_one_address(server.grpc, 5))
    assert many == 2 and refused(server.url, "client_connections") >= before + 2
    assert ordinary_call(server.grpc).outputs  # from 127.0.0.1, while CAPPED_ADDRESS is at its cap


CAPPED_ADDRESS = "127.0.0.20"  # none of the attack helpers' addresses: its count starts at 0


async def _from_one_address(target: str, count: int) -> int:
    """Open `count` connections from CAPPED_ADDRESS and hold them; how many were answered GOAWAY."""
    host, port = target.rsplit(":", 1)
    held = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=(CAPPED_ADDRESS, 0))
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)[:3] + b"\x04" + bytes(5))
        held.append((reader, writer))
    goaways = 0
    for reader, _ in held:
        try:
            data = await asyncio.wait_for(reader.read(4096), 1.0)
        except TimeoutError:
            continue
        goaways += b"too many open gRPC connections" in data
    for _, writer in held:
        writer.close()
    return goaways


def test_a_connection_that_never_sends_the_preface_is_closed(edge):
    server, _ = edge
    host, port = server.grpc.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.settimeout(30)  # a liveness bound: the server's own deadline is header_timeout_s, 1 s here
        while sock.recv(1024):  # gRPC's SETTINGS may come first; then the close
            pass
    assert refused(server.url, "header_timeout") >= 1


def test_a_continuation_flood_is_cut_at_the_header_limit(edge):
    server, _ = edge
    outcome, _sent = asyncio.run(continuation_flood(server.grpc, seconds=5.0, connections=1))
    assert "closed by the server x1" in outcome
    assert refused(server.url, "headers_too_large") >= 1


def test_malformed_and_oversized_messages_are_invalid_argument_without_a_log_line(edge):
    server, log = edge
    size = log.stat().st_size
    assert asyncio.run(garbage_protobuf(server.grpc, seconds=1.0)).startswith("INVALID_ARGUMENT x")
    assert (
        asyncio.run(output_flood(server.grpc, "tiny", seconds=1.0, clients=1, outputs=1000)).split(": ")[1].startswith("INVALID_ARGUMENT x")
    )
    assert asyncio.run(empty_elements(server.grpc, "tiny", seconds=1.0, elements=10_000)).startswith("INVALID_ARGUMENT x")
    written = log.read_text(errors="replace")[size:]
    assert "Traceback" not in written and " ERROR " not in written and " WARNING " not in written, written[:2000]


def test_an_output_named_twice_is_refused(edge):
    server, _ = edge
    request = infer_request("tiny", [PARITY_PAIRS[0]])
    request.outputs.extend(pb.ModelInferRequest.InferRequestedOutputTensor(name="score") for _ in range(2))
    with grpc.insecure_channel(server.grpc) as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(INFER, request_serializer=pb.ModelInferRequest.SerializeToString)(request, timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "more than once" in caught.value.details()


def test_model_named_methods_need_the_api_key_and_health_does_not(tiny_artifacts: Path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = start_server(tiny_artifacts / "int8-calibrated", grpc_port=str(free_port()), api_key="sesame")
    try:
        assert server.grpc is not None
        with grpc.insecure_channel(server.grpc) as channel:
            ready = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelReady",
                request_serializer=pb.ModelReadyRequest.SerializeToString,
                response_deserializer=pb.ModelReadyResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as caught:
                ready(pb.ModelReadyRequest(name="tiny"), timeout=30)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert ready(pb.ModelReadyRequest(name="tiny"), timeout=30, metadata=[("authorization", "Bearer sesame")]).ready
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        assert httpx.get(f"{server.url}/v2/models/tiny/ready", timeout=10).status_code == 401
        assert httpx.get(f"{server.url}/v2/models/other/ready", timeout=10).status_code == 401  # names are not revealed
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    finally:
        assert server.stop(30) == 0
