"""The field's protocols with the field's own clients: tritonclient and KServe's REST client over Open Inference
Protocol v2, the same scores as /predict; request ids on every answer and log line; traceparent into OpenTelemetry."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.main import create_app
from app.shared.observability import Tracer
from model_build.parity_pairs import PARITY_PAIRS
from tests.api.conftest import settings_for
from tests.harness.server import running_server

PAIRS = list(PARITY_PAIRS[:6])


def predict_scores(client: httpx.Client | TestClient, url: str = "") -> list[float]:
    body = {"pairs": [{"sentence1": a, "sentence2": b} for a, b in PAIRS]}
    return [p["score"] for p in client.post(f"{url}/predict", json=body).json()["predictions"]]


@pytest.fixture(scope="module")
def server(tiny_artifacts: Path):
    with running_server(tiny_artifacts / "int8-calibrated") as server:
        yield server.url


@pytest.mark.slow
def test_tritonclient_speaks_to_paraserve(server: str):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
        assert not client.is_model_ready("other")
        metadata = client.get_model_metadata("tiny")
        assert [i["name"] for i in metadata["inputs"]] == ["text_a", "text_b"] and metadata["inputs"][0]["datatype"] == "BYTES"
        for binary in (True, False):  # tritonclient's default is the binary tensor extension
            inputs = []
            for name, column in (("text_a", [a for a, _ in PAIRS]), ("text_b", [b for _, b in PAIRS])):
                tensor = triton.InferInput(name, [len(PAIRS)], "BYTES")
                tensor.set_data_from_numpy(np.array([s.encode() for s in column], dtype=object), binary_data=binary)
                inputs.append(tensor)
            result = client.infer(
                "tiny", inputs, request_id=f"triton-{binary}", outputs=[triton.InferRequestedOutput("score", binary_data=False)]
            )
            assert result.get_response()["id"] == f"triton-{binary}"
            with httpx.Client() as http:
                assert result.as_numpy("score").tolist() == pytest.approx(predict_scores(http, server), abs=0)
    finally:
        client.close()


@pytest.mark.slow
def test_kserve_rest_client_speaks_to_paraserve(server: str):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def scenario() -> tuple[bool, bool, list[float], str]:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            live = await client.is_server_live(server)
            ready = await client.is_model_ready(server, "tiny")
            inputs = [
                InferInput("text_a", [len(PAIRS)], "BYTES", [a for a, _ in PAIRS]),
                InferInput("text_b", [len(PAIRS)], "BYTES", [b for _, b in PAIRS]),
            ]
            response = await client.infer(server, InferRequest("tiny", inputs, request_id="kserve-1"), model_name="tiny")
            scores = next(o for o in response.outputs if o.name == "score").data
            return live, ready, list(scores), response.id
        finally:
            await client.close()

    live, ready, scores, rid = asyncio.run(scenario())
    assert live and ready and rid == "kserve-1"
    with httpx.Client() as http:
        assert scores == predict_scores(http, server)


def test_v2_probabilities_labels_and_errors(client: TestClient):
    body = {
        "id": "x",
        "inputs": [
            {"name": "text_b", "shape": [2, 1], "datatype": "BYTES", "data": [[b] for _, b in PAIRS[:2]]},
            {"name": "text_a", "shape": [2], "datatype": "BYTES", "data": [a for a, _ in PAIRS[:2]]},
        ],
        "outputs": [{"name": "probabilities"}, {"name": "label"}],
        "parameters": {"threshold": 0.01},
    }
    answer = client.post("/v2/models/tiny/infer", json=body)
    assert answer.status_code == 200, answer.text
    out = {o["name"]: o for o in answer.json()["outputs"]}
    assert set(out) == {"probabilities", "label"} and out["probabilities"]["shape"] == [2, 2]
    probs = out["probabilities"]["data"]
    assert probs[0] + probs[1] == pytest.approx(1) and out["label"]["data"] == ["paraphrase", "paraphrase"]  # threshold 0.01
    bad = [  # the wire format is v2's to check (invalid_input); pairs and the threshold are the core's (validation)
        ({**body, "inputs": body["inputs"][:1]}, "inputs", "invalid_input"),
        ({**body, "inputs": [dict(body["inputs"][0], datatype="FP32"), body["inputs"][1]]}, "datatype must be BYTES", "invalid_input"),
        ({**body, "inputs": [dict(body["inputs"][0], shape=["2", 1]), body["inputs"][1]]}, "shape", "invalid_input"),
        ({**body, "inputs": [dict(body["inputs"][0], shape=[True, 1]), body["inputs"][1]]}, "shape", "invalid_input"),
        ({**body, "outputs": [{"name": "embedding"}]}, "unknown output", "invalid_input"),
        (
            {**body, "inputs": [dict(body["inputs"][0], data=[["\u200b"], ["b"]]), body["inputs"][1]]},
            "input text_b[0]: has no character the tokenizer keeps",
            "validation",
        ),
        ({**body, "parameters": {"threshold": 2}}, "threshold", "validation"),
    ]
    for payload, fragment, error_type in bad:
        r = client.post("/v2/models/tiny/infer", json=payload)
        assert r.status_code == 400 and fragment in r.json()["error"] and r.json()["error_type"] == error_type, r.text
    assert client.post("/v2/models/other/infer", json=body).status_code == 404
    assert client.post("/v2/models/tiny/versions/0000/infer", json=body).status_code == 404
    version = client.get("/v2/models/tiny").json()["versions"][0]
    assert client.post(f"/v2/models/tiny/versions/{version}/infer", json=body).status_code == 200
    no_type = client.post("/v2/models/tiny/infer", content=json.dumps(body).encode())  # tritonclient sends no Content-Type
    assert no_type.status_code == 200
    broken = struct.pack("<I", 100) + b"short"
    header = json.dumps({"inputs": [dict(body["inputs"][0], parameters={"binary_data_size": len(broken)}, data=None), body["inputs"][1]]})
    r = client.post(
        "/v2/models/tiny/infer", content=header.encode() + broken, headers={"inference-header-content-length": str(len(header))}
    )
    assert r.status_code == 400 and "overruns" in r.json()["error"]


def test_predict_returns_probabilities_logits_tokens_truncation_and_a_threshold(client: TestClient):
    long = "word " * 300
    body = {"pairs": [{"sentence1": PAIRS[0][0], "sentence2": PAIRS[0][1]}, {"sentence1": long, "sentence2": "a"}]}
    plain = client.post("/predict", json=body).json()["predictions"]
    assert "logits" not in plain[0] and plain[0]["tokens"] < 128 and plain[0]["truncated"] is False
    assert plain[1]["tokens"] == 128 and plain[1]["truncated"] is True
    p = plain[0]["probabilities"]
    assert p["paraphrase"] == plain[0]["score"] and p["not_paraphrase"] + p["paraphrase"] == pytest.approx(1)
    both = client.post("/predict", json={**body, "return_logits": True, "threshold": 0.99}).json()["predictions"]
    assert set(both[0]["logits"]) == {"not_paraphrase", "paraphrase"}
    assert [x["label"] for x in both] == ["not_paraphrase", "not_paraphrase"] and both[0]["score"] == plain[0]["score"]
    for threshold in (0.0, 1.0, "0.5"):
        assert client.post("/predict", json={**body, "threshold": threshold}).status_code == 422


def test_request_ids_are_echoed_or_made_and_name_every_log_line_of_their_request(client: TestClient, caplog: pytest.LogCaptureFixture):
    from app.shared.observability import RequestIdFilter

    given = client.get("/healthz", headers={"x-request-id": "trace-me-1"})
    assert given.headers["x-request-id"] == "trace-me-1"
    made = client.post("/predict", json={"pairs": []})  # errors carry one too
    assert made.status_code == 422 and len(made.headers["x-request-id"]) == 32
    hostile = client.get("/healthz", headers={"x-request-id": "bad id\twith spaces" + "x" * 200})
    assert hostile.headers["x-request-id"] != "bad id\twith spaces" and len(hostile.headers["x-request-id"]) == 32
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.DEBUG):
        caplog.clear()
        for rid, (path, body) in {
            "req-a": ("/predict", {"pairs": []}),
            "req-b": ("/v2/models/tiny/infer", {"inputs": []}),
            "req-c": ("/v2/models/other/infer", {"inputs": []}),
        }.items():
            client.post(path, json=body, headers={"x-request-id": rid})
            lines = [r for r in caplog.records if r.name.startswith("app.")]
            assert lines and all(r.request_id == rid for r in lines), [(r.name, r.getMessage(), r.request_id) for r in lines]
            caplog.clear()
        logging.getLogger("app.test").info("outside any request")
        assert caplog.records[-1].request_id is None


@pytest.mark.slow
def test_a_traceparent_links_the_requests_spans_to_the_callers_trace(int8_dir: Path, runtime):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(settings_for(int8_dir), runtime=runtime, registry=CollectorRegistry(), tracer=Tracer(provider))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with TestClient(app) as client:
        r = client.post(
            "/predict",
            json={"pairs": [{"sentence1": "a cat", "sentence2": "a dog"}]},
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "x-request-id": "req-77"},
        )
    assert r.status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"POST /predict", "tokenize", "queue wait", "model forward"} <= set(spans)
    for span in spans.values():
        assert format(span.context.trace_id, "032x") == trace_id  # one trace with the caller's
        assert span.attributes["paraserve.request_id"] == "req-77"
    assert format(spans["POST /predict"].parent.span_id, "016x") == "00f067aa0ba902b7"
    assert spans["tokenize"].parent.span_id == spans["POST /predict"].context.span_id


OFF = """
import sys
from pathlib import Path
from app.shared.config import Settings
from app.main import create_app
from app.shared.observability import Tracer
app = create_app(Settings(artifact_dir=Path("unused")))
assert Tracer.from_environment().enabled is False
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))))
"""


def test_tracing_is_off_and_imports_nothing_without_an_exporter(monkeypatch: pytest.MonkeyPatch):
    import subprocess
    import sys

    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    imported = subprocess.run([sys.executable, "-c", OFF], capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    # A fresh process: the app made and tracing asked for, and no OpenTelemetry SDK or exporter loaded. (FastAPI itself
    # imports the OpenTelemetry *API* when it is installed, for its own optional instrumentation; that is not ours.)
    assert imported == "[]"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert Tracer.from_environment().enabled is True


def test_concurrent_requests_keep_their_own_ids(client: TestClient):
    seen: dict[str, str] = {}

    def send(i: int) -> None:
        r = client.post("/predict", json={"pairs": [{"sentence1": "a", "sentence2": "b"}]}, headers={"x-request-id": f"id-{i}"})
        seen[f"id-{i}"] = r.headers["x-request-id"]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen == {k: k for k in seen} and len(seen) == 12
