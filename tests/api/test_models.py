"""Several models in one server (a BERT and an MPNet, both tiny) and a cascade over them: routing by name on
/predict, REST v2 and gRPC; readiness per model; turns taken on the shared workers; the cascade escalates exactly the
pairs inside its band and says who decided."""

from __future__ import annotations

import statistics
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.core.models import Band
from app.core.service import CascadeSpec
from app.core.start import Repository
from app.main import create_app
from app.protocols.grpc_gen import open_inference_pb2 as pb
from app.shared.config import Settings, parse_models
from artifact.cascade import CASCADE_FORMAT, CascadeBand, CascadeFile, write_cascade
from artifact.encoding import EncodedPair
from artifact.runtime import BatchResult, Runtime
from model_build.parity_pairs import PARITY_PAIRS
from tests.harness.attacks.grpc_edge import INFER, infer_request
from tests.harness.scrape import metric_sum, samples
from tests.harness.server import free_port, running_server

PAIRS = list(PARITY_PAIRS[:8])


def fast_scores(folder: Path) -> list[float]:
    return Runtime.load(folder).predict(PAIRS)


def middle_band(scores: Sequence[float]) -> tuple[float, float]:
    """A band holding about half the pairs' fast scores (the tiny random model's scores cluster near 0.5)."""
    ordered = sorted(scores)
    return ordered[0], statistics.median(ordered)


@pytest.fixture(scope="module")
def repository_folders(tiny_artifacts: Path, tiny_mpnet_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    fast, accurate = tiny_artifacts / "int8-calibrated", tiny_mpnet_artifacts / "int8-calibrated"
    low, high = middle_band(fast_scores(fast))
    cascade = tmp_path_factory.mktemp("cascade") / "cascade"
    band = CascadeBand(low=low, high=high)
    spec = CascadeFile(format_version=CASCADE_FORMAT, name="cascade", fast="tiny", accurate="tiny-mpnet", band=band, chosen={})
    write_cascade(cascade, spec)
    return {"fast": fast, "accurate": accurate, "cascade": cascade}


@pytest.fixture(scope="module")
def server(repository_folders: dict[str, Path]) -> Iterator:
    models = ",".join(f"{name}={folder}" for name, folder in repository_folders.items())
    with running_server(repository_folders["fast"], models=models, grpc_port=str(free_port())) as s:
        yield s


def predict(url: str, model: str | None, pairs: list[tuple[str, str]] = PAIRS) -> dict:
    body = {"pairs": [{"sentence1": a, "sentence2": b} for a, b in pairs], **({"model": model} if model else {})}
    r = httpx.post(f"{url}/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_predict_routes_by_the_model_field_and_defaults_to_the_first(server, repository_folders):
    fast, accurate = fast_scores(repository_folders["fast"]), fast_scores(repository_folders["accurate"])
    default = predict(server.url, None)
    assert default["model"]["name"] == "fast" and [p["score"] for p in default["predictions"]] == pytest.approx(fast, abs=1e-6)
    named = predict(server.url, "accurate")
    assert named["model"]["name"] == "accurate" and [p["score"] for p in named["predictions"]] == pytest.approx(accurate, abs=1e-6)
    assert {p["decided_by"] for p in named["predictions"]} == {"accurate"}
    r = httpx.post(f"{server.url}/predict", json={"pairs": [{"sentence1": "a", "sentence2": "b"}], "model": "other"}, timeout=30)
    assert r.status_code == 404 and r.json()["error_type"] == "model_not_found"


def test_rest_v2_and_grpc_route_by_the_name_in_the_call(server, repository_folders):
    accurate = fast_scores(repository_folders["accurate"])
    body = {
        "inputs": [
            {"name": "text_a", "shape": [len(PAIRS)], "datatype": "BYTES", "data": [a for a, _ in PAIRS]},
            {"name": "text_b", "shape": [len(PAIRS)], "datatype": "BYTES", "data": [b for _, b in PAIRS]},
        ],
        "outputs": [{"name": "score"}],
    }
    rest = httpx.post(f"{server.url}/v2/models/accurate/infer", json=body, timeout=60).json()
    assert rest["model_name"] == "accurate" and rest["outputs"][0]["data"] == pytest.approx(accurate, abs=1e-6)
    assert httpx.post(f"{server.url}/v2/models/other/infer", json=body, timeout=60).status_code == 404
    with grpc.insecure_channel(server.grpc) as channel:
        serialize, parse = pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString
        call = channel.unary_unary(INFER, request_serializer=serialize, response_deserializer=parse)
        answer = call(infer_request("accurate", PAIRS), timeout=60)
        assert answer.model_name == "accurate"
        with pytest.raises(grpc.RpcError) as caught:
            call(infer_request("other", PAIRS), timeout=60)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_every_model_is_listed_and_ready_by_name(server):
    listed = httpx.get(f"{server.url}/models", timeout=30).json()["models"]
    assert [(m["name"], m["kind"], m["ready"], m["default"]) for m in listed] == [
        ("fast", "model", True, True),
        ("accurate", "model", True, False),
        ("cascade", "cascade", True, False),
    ]
    assert listed[2]["stages"] == ["fast", "accurate"]
    for name in ("fast", "accurate", "cascade"):
        assert httpx.get(f"{server.url}/v2/models/{name}/ready", timeout=30).json() == {"name": name, "ready": True}
    assert httpx.get(f"{server.url}/v2/models/other/ready", timeout=30).status_code == 404
    info = httpx.get(f"{server.url}/model", params={"model": "cascade"}, timeout=30).json()
    assert info["kind"] == "cascade" and info["fast"] == "fast" and info["accurate"] == "accurate"


def test_the_cascade_escalates_exactly_the_pairs_inside_its_band_and_says_who_decided(server, repository_folders):
    fast, accurate = fast_scores(repository_folders["fast"]), fast_scores(repository_folders["accurate"])
    low, high = middle_band(fast)
    inside = [low <= f < high for f in fast]
    assert 0 < sum(inside) < len(PAIRS)  # the band splits the pairs: both stages answer
    before = samples(httpx.get(f"{server.url}/metrics", timeout=30).text)
    answer = predict(server.url, "cascade")
    assert [p["decided_by"] for p in answer["predictions"]] == ["accurate" if i else "fast" for i in inside]
    expected = [a if i else f for f, a, i in zip(fast, accurate, inside, strict=True)]
    assert [p["score"] for p in answer["predictions"]] == pytest.approx(expected, abs=1e-6)
    after = samples(httpx.get(f"{server.url}/metrics", timeout=30).text)
    escalated = metric_sum(after, "paraserve_cascade_pairs_total", decided_by="accurate") - metric_sum(
        before, "paraserve_cascade_pairs_total", decided_by="accurate"
    )
    assert escalated == sum(inside)


class RecordingRuntime(Runtime):
    """The real runtime, recording the order in which batches of each model run, behind a gate the test holds."""

    order: list[str]
    tag: str
    gate: threading.Event
    entered: threading.Event

    def forward(self, rows: Sequence[EncodedPair]) -> BatchResult:
        self.entered.set()
        assert self.gate.wait(30), "the test left the gate closed"
        self.order.append(self.tag)
        return super().forward(rows)


def recording(folder: Path, tag: str, order: list[str], gate: threading.Event) -> RecordingRuntime:
    rt = RecordingRuntime.load(folder, padding="fixed")
    rt.order, rt.tag, rt.gate, rt.entered = order, tag, gate, threading.Event()
    return rt


def test_a_backlog_on_one_model_does_not_hold_up_the_other(tiny_artifacts: Path, tiny_mpnet_artifacts: Path):
    order: list[str] = []
    gate, open_gate = threading.Event(), threading.Event()
    open_gate.set()
    busy = recording(tiny_artifacts / "int8-calibrated", "busy", order, gate)
    other = recording(tiny_mpnet_artifacts / "int8-calibrated", "other", order, open_gate)
    settings = Settings(artifact_dir=tiny_artifacts, workers=1, max_batch_wait_ms=0)
    app = create_app(settings, repository=Repository({"busy": busy, "other": other}, {}), registry=CollectorRegistry())
    with TestClient(app) as client:
        results: dict[str, int] = {}

        def send(name: str, pairs: int, key: str) -> None:
            body = {"pairs": [{"sentence1": "a cat", "sentence2": "a dog"}] * pairs, "model": name}
            results[key] = client.post("/predict", json=body).status_code

        threads = [threading.Thread(target=send, args=("busy", 8, f"busy{i}")) for i in range(5)]
        threads[0].start()
        assert busy.entered.wait(30)  # busy's first batch holds the only worker
        for t in threads[1:]:
            t.start()
        service = app.state.service
        while service.get("busy").batcher.depth < 32:  # four more of busy's batches queued behind it
            busy.entered.wait(0.01)
        late = threading.Thread(target=send, args=("other", 1, "other"))
        late.start()
        while service.get("other").batcher.depth < 1:
            busy.entered.wait(0.01)
        gate.set()
        for t in [*threads, late]:
            t.join(60)
    assert results == {**{f"busy{i}": 200 for i in range(5)}, "other": 200}
    # The worker goes to the batchers in the order they asked: busy's second batch (asked first), then the other model's,
    # never behind all four of busy's queued batches.
    assert order.index("other") <= 2 and order.count("busy") == 5, order


def test_a_cascade_whose_stage_is_not_served_is_refused_in_one_line(tiny_artifacts: Path, tmp_path: Path):
    from app.core.start import open_models

    cascade = tmp_path / "cascade"
    band = CascadeBand(low=0.4, high=0.6)
    write_cascade(cascade, CascadeFile(format_version=CASCADE_FORMAT, name="c", fast="tiny", accurate="missing", band=band, chosen={}))
    settings = Settings(models=f"fast={tiny_artifacts / 'int8'},cascade={cascade}", workers=1)
    with pytest.raises(Exception, match=r"cascade 'cascade' .* needs a model built as 'missing'"):
        open_models(settings)


def test_the_model_list_setting_is_checked_when_read():
    assert list(parse_models("fast=a, accurate=b/c")) == ["fast", "accurate"]
    for bad in ("fast", "fast=", "=a", "fast=a,fast=b", "bad name=a"):
        with pytest.raises(ValueError):
            parse_models(bad)


def test_the_cascade_spec_band_is_checked():
    with pytest.raises(ValueError):
        Band(0.6, 0.4)
    assert CascadeSpec("a", "b", Band(0.3, 0.7), {}).band.holds(0.5)


def test_a_ray_replica_serves_the_whole_repository(repository_folders):
    """Ray Serve: `models` in the application's args makes each replica host every model, as one process does."""
    from deploy.ray.replica import replica_app, replica_settings

    models = ",".join(f"{name}={folder}" for name, folder in repository_folders.items())
    app = replica_app(replica_settings({"artifact_dir": str(repository_folders["fast"]), "models": models}))
    with TestClient(app) as client:
        listed = {m["name"]: m["ready"] for m in client.get("/models").json()["models"]}
        assert listed == {"fast": True, "accurate": True, "cascade": True}
        for name in listed:
            r = client.post("/predict", json={"pairs": [{"sentence1": "a b", "sentence2": "a c"}], "model": name})
            assert r.status_code == 200, r.text
