from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from model_build.parity_pairs import PARITY_PAIRS
from tests.api.conftest import GatedRuntime, settings_for

PAIR = {"sentence1": "The cat sat on the mat.", "sentence2": "A cat was sitting on the mat."}


def body(pairs):
    return {"pairs": [{"sentence1": a, "sentence2": b} for a, b in pairs]}


def metric_samples(client: TestClient) -> dict[str, float]:
    """Every sample by name and labels; the `model` label is left out (these apps serve the one model, tiny)."""
    text = client.get("/metrics").text
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = sorted((k, v) for k, v in s.labels.items() if k != "model")
            assert s.labels.get("model", "tiny") == "tiny"
            found[f"{s.name}{labels if labels else ''}"] = s.value
    return found


def test_one_pair(client: TestClient, runtime: GatedRuntime):
    r = client.post("/predict", json={"pairs": [PAIR]})
    assert r.status_code == 200, r.text
    data = r.json()
    (prediction,) = data["predictions"]
    assert 0.0 <= prediction["score"] <= 1.0
    assert prediction["label"] == ("paraphrase" if prediction["score"] >= 0.5 else "not_paraphrase")
    assert data["model"] == {"name": "tiny", "variant": "int8", "sha256": runtime.sha256}
    assert float(r.headers["x-inference-time"]) > 0
    assert "queue;dur=" in r.headers["server-timing"]


def test_many_pairs_span_batches_in_order_and_equal_a_direct_model_call(client: TestClient, runtime: GatedRuntime):
    pairs = list(PARITY_PAIRS) + [(b, a) for a, b in PARITY_PAIRS[:4]]  # 20 pairs: batches of 8, 8, 4
    r = client.post("/predict", json=body(pairs))
    assert r.status_code == 200, r.text
    served = [p["score"] for p in r.json()["predictions"]]
    direct = runtime.predict(pairs)  # same tokenizer, same 8-row chunks, same 8x128 padding
    assert served == pytest.approx(direct, abs=1e-6)
    assert len(set(served)) > 1  # a real check: the pairs score differently


def test_concurrent_requests_share_batches(int8_dir: Path, runtime: GatedRuntime):
    app = create_app(settings_for(int8_dir, max_batch_wait_ms=300), runtime=runtime, registry=CollectorRegistry())

    async def scenario() -> str:
        from asgi_lifespan import LifespanManager

        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                responses = await asyncio.gather(*(c.post("/predict", json={"pairs": [PAIR]}) for _ in range(8)))
                assert all(r.status_code == 200 for r in responses)
                return (await c.get("/metrics")).text

    text = asyncio.run(scenario())
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if set(s.labels) <= {"model"}}
    assert samples["paraserve_batch_rows_sum"] == 8
    assert samples["paraserve_batch_rows_count"] < 8  # fewer batches than requests: they were shared


def test_int8_calibrated_answers_a_pair_the_same_alone_or_in_any_batch(tiny_artifacts: Path):
    """The default artifact under auto padding (buckets): companions and padding do not move a pair's score."""
    artifact = tiny_artifacts / "int8-calibrated"
    app = create_app(settings_for(artifact, max_batch_wait_ms=50), registry=CollectorRegistry())
    others = [{"sentence1": a, "sentence2": b} for a, b in PARITY_PAIRS]

    async def scenario() -> tuple[float, list[float], str]:
        from asgi_lifespan import LifespanManager

        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                alone = (await c.post("/predict", json={"pairs": [PAIR]})).json()["predictions"][0]["score"]
                mixed = await asyncio.gather(
                    *(c.post("/predict", json={"pairs": [*others[i : i + k], PAIR]}) for i, k in ((0, 3), (4, 7), (9, 1), (2, 0)))
                )
                padding = (await c.get("/model")).json()["padding"]
                return alone, [r.json()["predictions"][-1]["score"] for r in mixed], padding

    alone, mixed, padding = asyncio.run(scenario())
    assert padding == "buckets"
    assert mixed == pytest.approx([alone] * len(mixed), abs=1e-6)


def test_a_full_queue_answers_429_with_retry_after(int8_dir: Path, runtime: GatedRuntime):
    app = create_app(settings_for(int8_dir, queue_capacity=8, max_batch_wait_ms=0), runtime=runtime, registry=CollectorRegistry())
    with TestClient(app) as client:
        runtime.gate.clear()
        runtime.entered.clear()
        results: list[int] = []

        def send(n: int) -> None:
            results.append(client.post("/predict", json={"pairs": [PAIR] * n}).status_code)

        first = threading.Thread(target=send, args=(8,))  # taken into a batch, held at the gate
        first.start()
        assert runtime.entered.wait(10)
        second = threading.Thread(target=send, args=(8,))  # fills the queue
        second.start()
        _wait_until(lambda: metric_samples(client)["paraserve_queue_depth_pairs"] == 8)
        started = time.perf_counter()
        r = client.post("/predict", json={"pairs": [PAIR]})
        refused_in = time.perf_counter() - started
        runtime.gate.set()
        first.join(10)
        second.join(10)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.json()["error_type"] == "overloaded"
    assert refused_in < 5  # at once, not after the queue drained (the gate was still closed)
    assert results == [200, 200]


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_inference_error_fails_the_batch_with_500_and_the_service_goes_on(client: TestClient, runtime: GatedRuntime):
    runtime.fail = True
    r = client.post("/predict", json={"pairs": [PAIR]})
    assert r.status_code == 500
    assert r.json() == {"error": "inference failed for this batch: RuntimeError", "error_type": "inference"}
    runtime.fail = False
    assert client.post("/predict", json={"pairs": [PAIR]}).status_code == 200
    assert client.get("/readyz").status_code == 200
    assert metric_samples(client)["paraserve_batches_failed_total"] == 1


def test_readiness_before_and_after_startup(int8_dir: Path, runtime: GatedRuntime):
    app = create_app(settings_for(int8_dir), runtime=runtime, registry=CollectorRegistry())
    cold = TestClient(app)  # no `with`: the lifespan has not run
    assert cold.get("/healthz").json() == {"status": "ok", "detail": None}
    assert cold.get("/readyz").status_code == 503
    r = cold.post("/predict", json={"pairs": [PAIR]})
    assert r.status_code == 503 and r.json()["error_type"] == "not_ready"
    with TestClient(app) as warm:
        assert warm.get("/readyz").json()["status"] == "ready"
    assert cold.get("/readyz").status_code == 503  # after shutdown


def test_model_info(client: TestClient, runtime: GatedRuntime):
    info = client.get("/model").json()
    assert info["variant"] == "int8" and info["sha256"] == runtime.sha256
    assert info["model_bytes"] == runtime.model_bytes
    assert info["trace_shape"] == {"batch_size": 8, "seq_len": 128}
    assert info["padding"] == "fixed" and info["settings"]["padding"] == "auto"  # dynamic int8 is not batch-invariant
    assert info["settings"]["max_pairs_per_request"] == 64
    assert info["manifest"]["qconfig"]["qconfig"] == "per_channel_dynamic_qconfig"


def test_model_info_names_the_kernel_path_flags_a_random_model_and_shows_no_host_paths(client: TestClient, int8_dir: Path):
    from artifact.kernels import int8_kernel_path

    info = client.get("/model").json()
    assert info["cpu"]["int8_kernel"] == int8_kernel_path() and info["cpu"]["int8_kernel"] in ("vnni", "avx2")
    assert info["random_init"] is True  # the tiny test model: random weights, and /model says so
    assert str(int8_dir.parent) not in json.dumps(info)  # neither the artifact's nor the checkpoint's folder path
    assert info["settings"]["artifact"] == "int8" and "artifact_dir" not in info["settings"]
    metrics = client.get("/metrics").text
    assert f'int8_kernel="{int8_kernel_path()}"' in metrics and 'random_init="true"' in metrics


def test_metrics_names_types_and_units(client: TestClient):
    client.post("/predict", json={"pairs": [PAIR, PAIR]})
    client.post("/predict", json={"pairs": []})
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    expected = {
        "paraserve_http_requests": "counter",
        "paraserve_http_request_duration_seconds": "histogram",
        "paraserve_queue_wait_seconds": "histogram",
        "paraserve_inference_duration_seconds": "histogram",
        "paraserve_tokenize_duration_seconds": "histogram",
        "paraserve_batch_rows": "histogram",
        "paraserve_batch_token_fill_ratio": "histogram",
        "paraserve_queue_depth_pairs": "gauge",
        "paraserve_model_size_bytes": "gauge",
        "paraserve_model_info": "gauge",
        "paraserve_errors": "counter",
        "paraserve_predictions": "counter",
        "paraserve_ready": "gauge",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
    samples = metric_samples(client)
    assert samples["paraserve_model_size_bytes[('variant', 'int8')]"] > 0
    assert samples["paraserve_errors_total[('error_type', 'validation')]"] == 1
    assert samples["paraserve_http_requests_total[('method', 'POST'), ('route', '/predict'), ('status', '200')]"] == 1
    assert samples["paraserve_batch_rows_sum"] == 2
    fill = samples["paraserve_batch_token_fill_ratio_sum"]
    assert 0 < fill < 0.5  # two short pairs in an 8x128 batch: mostly padding


def test_openapi_documents_the_example_and_limits(client: TestClient):
    schema = client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["PredictRequest"]
    assert request["examples"][0]["pairs"][0]["sentence1"].startswith("He said the foodservice")
    assert request["properties"]["pairs"]["maxItems"] == 64
    assert "429" in schema["paths"]["/predict"]["post"]["responses"]
    assert client.get("/docs").status_code == 200


def test_bucketed_padding_serves_the_same_scores_as_fixed_padding(tiny_artifacts: Path):
    from artifact.runtime import Runtime

    fp32 = tiny_artifacts / "fp32"  # fp32: padding is masked out exactly, whatever the grouping of rows
    app = create_app(settings_for(fp32, padding="buckets"), registry=CollectorRegistry())
    pairs = list(PARITY_PAIRS)
    with TestClient(app) as client:
        r = client.post("/predict", json=body(pairs))
        text = client.get("/metrics").text
    assert r.status_code == 200
    served = [p["score"] for p in r.json()["predictions"]]
    assert served == pytest.approx(Runtime.load(fp32).predict(pairs), abs=1e-5)
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if set(s.labels) <= {"model"}}
    assert values["paraserve_batch_token_fill_ratio_sum"] / values["paraserve_batch_token_fill_ratio_count"] > 0.5


def test_two_workers_give_every_pair_the_score_it_gets_alone(tiny_artifacts: Path):
    """int8-calibrated is batch-invariant, so which worker ran a pair (and with whom) cannot change its score."""
    from artifact.runtime import Runtime

    artifact = tiny_artifacts / "int8-calibrated"
    app = create_app(settings_for(artifact, workers=2, max_batch_wait_ms=0), registry=CollectorRegistry())
    pairs = list(PARITY_PAIRS)
    alone = [Runtime.load(artifact).predict([pair])[0] for pair in pairs]
    with TestClient(app) as client:
        answers: dict[int, list[float]] = {}

        def send(i: int) -> None:
            subset = [pairs[(i + k) % len(pairs)] for k in range(1 + i % 5)]
            body = {"pairs": [{"sentence1": a, "sentence2": b} for a, b in subset]}
            answers[i] = [p["score"] for p in client.post("/predict", json=body).json()["predictions"]]

        threads = [threading.Thread(target=send, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        info = client.get("/model").json()
    assert sorted(answers) == list(range(24))  # every request was answered (a thread still waiting would be missing)
    for i, scores in answers.items():
        assert scores == [alone[(i + k) % len(pairs)] for k in range(1 + i % 5)], i
    batches = {s.labels["worker"]: s.value for s in families["paraserve_worker_batches"].samples if s.name.endswith("_total")}
    assert sum(batches.values()) >= 1 and info["workers"] == 2 and families["paraserve_workers"].samples[0].value == 2
