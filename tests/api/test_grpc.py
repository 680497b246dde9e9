"""Open Inference Protocol v2 over gRPC: the field's client (tritonclient.grpc) against a real server,
the same scores as /predict; status codes for a client's mistakes, overload and readiness; an expired deadline frees
the queue room; the standard health service; generated stubs that match the proto."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from app.main import create_app
from app.protocols.grpc_gen import open_inference_pb2 as pb
from app.protocols.grpc_gen import open_inference_pb2_grpc as pb_grpc
from app.protocols.oip import OUTPUTS
from model_build.parity_pairs import PARITY_PAIRS
from tests.api.conftest import GatedRuntime, settings_for
from tests.harness.scrape import metric_sum, samples
from tests.harness.server import free_port, start_server

ROOT = Path(__file__).resolve().parents[2]
PAIRS = list(PARITY_PAIRS[:6])


def test_the_committed_stubs_are_what_the_proto_generates():
    result = subprocess.run([sys.executable, "scripts/gen_grpc.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def server(tiny_artifacts: Path) -> Iterator[tuple[str, int]]:
    grpc_port = free_port()
    s = start_server(tiny_artifacts / "int8-calibrated", grpc_port=str(grpc_port))
    try:
        yield s.url, grpc_port
    finally:
        assert s.stop(30) == 0


def predict_scores(url: str) -> list[float]:
    body = {"pairs": [{"sentence1": a, "sentence2": b} for a, b in PAIRS]}
    return [p["score"] for p in httpx.post(f"{url}/predict", json=body, timeout=30).json()["predictions"]]


# tritonclient.grpc and kserve (tests/api/test_protocols.py) register the same `inference.*` protobuf names in
# protobuf's process-wide pool, so they cannot be imported into one process: the Triton client runs in its own.
TRITON_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as triton

port, pairs = int(sys.argv[1]), json.loads(sys.argv[2])
client = triton.InferenceServerClient(f"127.0.0.1:{port}")
found = {"live": client.is_server_live(), "ready": client.is_server_ready(), "model ready": client.is_model_ready("tiny")}
found["other ready"] = client.is_model_ready("other")
metadata = client.get_model_metadata("tiny", as_json=True)
found["inputs"] = [(i["name"], i["datatype"]) for i in metadata["inputs"]]
inputs = []
for name, column in (("text_a", [a for a, _ in pairs]), ("text_b", [b for _, b in pairs])):
    tensor = triton.InferInput(name, [len(pairs)], "BYTES")
    tensor.set_data_from_numpy(np.array([s.encode() for s in column], dtype=object))  # sent as raw_input_contents
    inputs.append(tensor)
outputs = [triton.InferRequestedOutput(n) for n in ("score", "label")]
result = client.infer("tiny", inputs, request_id="grpc-1", outputs=outputs)
found["id"] = result.get_response().id
found["scores"] = result.as_numpy("score").tolist()
found["labels"] = sorted({v.decode() for v in result.as_numpy("label").tolist()})
client.close()
print(json.dumps(found))
"""


@pytest.mark.slow
def test_tritonclient_grpc_speaks_to_paraserve(server: tuple[str, int]):
    url, port = server
    run = subprocess.run(
        [sys.executable, "-c", TRITON_CLIENT, str(port), json.dumps(PAIRS)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["live"] and found["ready"] and found["model ready"] and not found["other ready"]
    assert found["inputs"] == [["text_a", "BYTES"], ["text_b", "BYTES"]] and found["id"] == "grpc-1"
    assert found["scores"] == pytest.approx(predict_scores(url), abs=0)
    assert set(found["labels"]) <= {"paraphrase", "not_paraphrase"}


@pytest.mark.slow
def test_bytes_contents_and_every_output_as_the_rest_side_gives_them(server: tuple[str, int]):
    url, port = server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="tiny", id="c-1")
        for name, column in (("text_a", [a for a, _ in PAIRS]), ("text_b", [b for _, b in PAIRS])):
            request.inputs.add(name=name, datatype="BYTES", shape=[len(PAIRS)]).contents.bytes_contents.extend(s.encode() for s in column)
        request.parameters["threshold"].double_param = 0.01
        response, call = stub.ModelInfer.with_call(request, metadata=(("x-request-id", "grpc-id-7"),))
    assert dict(call.initial_metadata())["x-request-id"] == "grpc-id-7"
    raw = dict(zip([o.name for o in response.outputs], response.raw_output_contents, strict=True))
    shapes = {o.name: list(o.shape) for o in response.outputs}
    assert shapes == {"probabilities": [6, 2], "label": [6], "score": [6], "tokens": [6], "truncated": [6], "decided_by": [6]}
    scores = np.frombuffer(raw["score"], "<f4").tolist()
    assert scores == pytest.approx(predict_scores(url), abs=1e-7)  # FP32 on the wire
    assert np.frombuffer(raw["probabilities"], "<f4").reshape(6, 2).sum(axis=1) == pytest.approx([1.0] * 6, abs=1e-6)
    assert raw["label"].count(b"paraphrase") == 6  # threshold 0.01 labels every pair a paraphrase
    assert np.frombuffer(raw["truncated"], "?").tolist() == [False] * 6 and np.frombuffer(raw["tokens"], "<i4").min() > 3
    metrics = samples(httpx.get(f"{url}/metrics").text)
    assert metric_sum(metrics, "paraserve_grpc_requests_total", method="ModelInfer", code="OK") >= 1


def infer_request(a: list[bytes], b: list[bytes], **fields: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(**{"model_name": "tiny", **fields})  # type: ignore[arg-type]
    for name, column in (("text_a", a), ("text_b", b)):
        request.inputs.add(name=name, datatype="BYTES", shape=[len(column)]).contents.bytes_contents.extend(column)
    return request


@pytest.mark.slow
def test_a_clients_mistakes_are_invalid_argument_or_not_found_never_unknown_or_internal(server: tuple[str, int]):
    _, port = server
    wrong_type = infer_request([b"a"], [b"b"])
    wrong_type.inputs[0].datatype = "FP32"
    bad_shape = infer_request([b"a", b"b"], [b"c", b"d"])
    bad_shape.inputs[0].shape[:] = [3]
    unknown_output = infer_request([b"a"], [b"b"])
    unknown_output.outputs.add(name="embedding")
    cases = [
        (infer_request([b"a"], [b"b"], model_name="other"), grpc.StatusCode.NOT_FOUND, "no model named"),
        (wrong_type, grpc.StatusCode.INVALID_ARGUMENT, "datatype must be BYTES"),
        (bad_shape, grpc.StatusCode.INVALID_ARGUMENT, "does not hold its 2 elements"),
        (unknown_output, grpc.StatusCode.INVALID_ARGUMENT, "unknown output"),
        (infer_request([b""], [b"b"]), grpc.StatusCode.INVALID_ARGUMENT, "input text_a[0]: 0 characters"),
        (infer_request([b"\xff\xfe"], [b"b"]), grpc.StatusCode.INVALID_ARGUMENT, "is not UTF-8"),
        (infer_request([b"\xe2\x80\x8b"], [b"b"]), grpc.StatusCode.INVALID_ARGUMENT, "no character the tokenizer keeps"),
        (infer_request([b"a"] * 65, [b"b"] * 65), grpc.StatusCode.INVALID_ARGUMENT, "65 pairs; 1 to 64 allowed"),
        (
            pb.ModelInferRequest(model_name="tiny", raw_input_contents=[b"\x05\x00\x00\x00ab"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "raw_input",
        ),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for request, code, fragment in cases:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request, timeout=10)
            assert caught.value.code() == code and fragment in caught.value.details(), (code, caught.value.details())
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING


def test_overload_expired_deadlines_readiness_and_keys_in_process(int8_dir: Path, runtime: GatedRuntime):
    """One process, the real app and lifespan: the model held at a gate fills the queue."""
    from asgi_lifespan import LifespanManager

    port = free_port()
    app = create_app(
        settings_for(int8_dir, grpc_port=port, queue_capacity=8, max_batch_wait_ms=0, api_key="k", host="127.0.0.1"),
        runtime=runtime,
        registry=CollectorRegistry(),
    )
    key = (("authorization", "Bearer k"),)

    async def scenario() -> dict[str, object]:
        found: dict[str, object] = {}
        async with LifespanManager(app):
            service = app.state.service
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ModelInfer(infer_request([b"a"], [b"b"]))
                found["no key"] = caught.value.code()
                runtime.gate.clear()
                runtime.entered.clear()
                held = asyncio.ensure_future(stub.ModelInfer(infer_request([b"a"] * 8, [b"b"] * 8), metadata=key))
                while not runtime.entered.is_set():
                    await asyncio.sleep(0.01)
                queued = asyncio.ensure_future(stub.ModelInfer(infer_request([b"c"] * 8, [b"d"] * 8), metadata=key))
                while service.get().batcher.depth < 8:
                    await asyncio.sleep(0.01)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ModelInfer(infer_request([b"e"], [b"f"]), metadata=key)
                found["overload"] = caught.value.code()
                queued.cancel()  # the client gives up: its 8 rows leave the queue
                while service.get().batcher.depth:
                    await asyncio.sleep(0.01)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ModelInfer(infer_request([b"g"] * 3, [b"h"] * 3), metadata=key, timeout=0.3)
                found["deadline"] = caught.value.code()
                await asyncio.sleep(0.2)
                found["depth after the deadline"] = service.get().batcher.depth
                runtime.gate.set()
                found["held"] = len((await held).outputs)
                health = health_pb2_grpc.HealthStub(channel)
                found["health"] = (await health.Check(health_pb2.HealthCheckRequest(service=""))).status
                service.begin_shutdown()
                await asyncio.sleep(0.1)
                found["health draining"] = (await health.Check(health_pb2.HealthCheckRequest(service=""))).status
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ModelInfer(infer_request([b"a"], [b"b"]), metadata=key)
                found["draining"] = caught.value.code()
        return found

    found = asyncio.run(scenario())
    assert found == {
        "no key": grpc.StatusCode.UNAUTHENTICATED,
        "overload": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
        "depth after the deadline": 0,
        "held": len(OUTPUTS),  # every output, decided_by included
        "health": health_pb2.HealthCheckResponse.SERVING,
        "health draining": health_pb2.HealthCheckResponse.NOT_SERVING,
        "draining": grpc.StatusCode.UNAVAILABLE,
    }
