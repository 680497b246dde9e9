"""Least privilege and failure behaviour: API key, tampered artifacts, a dead worker, clients that leave."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.core.service import PredictionService
from app.main import create_app
from app.shared.errors import ClientClosed
from app.shared.metrics import Metrics
from tests.api.conftest import GatedRuntime, settings_for
from tests.harness.server import free_port

PAIR = {"sentence1": "a cat", "sentence2": "a dog"}


def test_api_key_protects_predict_and_model_but_not_health_or_metrics(int8_dir: Path, runtime: GatedRuntime):
    app = create_app(settings_for(int8_dir, api_key="s3cret"), runtime=runtime, registry=CollectorRegistry())
    with TestClient(app) as c:
        for path, method in (("/predict", "post"), ("/model", "get")):
            r = getattr(c, method)(path, **({"json": {"pairs": [PAIR]}} if method == "post" else {}))
            assert r.status_code == 401 and r.json()["error_type"] == "unauthorized", path
            assert r.headers["www-authenticate"] == "Bearer"
            wrong = getattr(c, method)(
                path, headers={"authorization": "Bearer nope"}, **({"json": {"pairs": [PAIR]}} if method == "post" else {})
            )
            assert wrong.status_code == 401
        assert c.post("/predict", json={"pairs": [PAIR]}, headers={"authorization": "Bearer s3cret"}).status_code == 200
        info = c.get("/model", headers={"authorization": "bearer s3cret"}).json()
        assert info["settings"]["api_key"] == "**********"  # never echoed
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_metrics_can_be_protected_too(int8_dir: Path, runtime: GatedRuntime):
    app = create_app(settings_for(int8_dir, api_key="k", protect_metrics=True), runtime=runtime, registry=CollectorRegistry())
    with TestClient(app) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"authorization": "Bearer k"}).status_code == 200
        assert c.get("/readyz").status_code == 200


def _run_app(artifact: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PARASERVE_ARTIFACT_DIR=str(artifact), PARASERVE_PORT=str(free_port()))  # a port anyone may bind
    return subprocess.run([sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=60)


def test_a_tampered_model_refuses_to_start(int8_dir: Path, tmp_path: Path):
    copy = tmp_path / "int8"
    shutil.copytree(int8_dir, copy)
    data = bytearray((copy / "model.pt").read_bytes())
    data[100] ^= 0x01
    (copy / "model.pt").write_bytes(bytes(data))
    result = _run_app(copy)
    assert result.returncode == 2
    assert "cannot start:" in result.stderr and "refusing a modified model" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_artifact_refuses_to_start(tmp_path: Path):
    result = _run_app(tmp_path / "nowhere")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_a_dead_worker_turns_readyz_503_and_stops_the_server(int8_dir: Path, runtime: GatedRuntime):
    stopped: list[bool] = []
    app = create_app(settings_for(int8_dir), runtime=runtime, registry=CollectorRegistry(), stop_server=lambda: stopped.append(True))
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        service: PredictionService = app.state.service
        service.get().batcher._task.cancel()  # type: ignore[union-attr]
        c.get("/healthz")  # let the loop run the cancellation
        assert c.get("/readyz").status_code == 503
        r = c.post("/predict", json={"pairs": [PAIR]})
        assert r.status_code == 503 and r.json()["error_type"] == "not_ready"
    # and a loop that raises on a bug of its own
    app2 = create_app(settings_for(int8_dir), runtime=runtime, registry=CollectorRegistry(), stop_server=lambda: stopped.append(True))
    with TestClient(app2) as c:

        async def bug(*_: object) -> None:
            raise AttributeError("a bug in the batch loop itself")

        app2.state.service.get().batcher._run = bug
        r = c.post("/predict", json={"pairs": [PAIR]})
        assert r.status_code == 500 and r.json() == {"error": "the model worker stopped", "error_type": "inference"}
        assert c.get("/readyz").status_code == 503
        assert app2.state.service.fatal is not None
    assert stopped == [True, True]


def test_a_client_that_leaves_frees_its_queue_slots(int8_dir: Path, runtime: GatedRuntime):
    async def scenario() -> tuple[int, int]:
        service = PredictionService(settings_for(int8_dir, max_batch_wait_ms=0), Metrics(CollectorRegistry()))
        await service.start({"tiny": runtime})
        runtime.gate.clear()
        runtime.entered.clear()
        blocker = asyncio.ensure_future(service.score([("a", "b")] * 8))  # holds the model
        while not runtime.entered.is_set():
            await asyncio.sleep(0.01)
        left = asyncio.Event()
        leaving = asyncio.ensure_future(service.score([("c", "d")] * 5, gone=left.wait))
        while service.get().batcher.depth < 5:  # queued behind the blocker
            await asyncio.sleep(0)
        depth_while_waiting = service.get().batcher.depth
        left.set()
        with pytest.raises(ClientClosed):
            await leaving
        await asyncio.sleep(0)
        depth_after = service.get().batcher.depth
        runtime.gate.set()
        await blocker
        await service.stop()
        return depth_while_waiting, depth_after

    waiting, after = asyncio.run(scenario())
    assert (waiting, after) == (5, 0)


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_schema_violation(int8_dir: Path, tmp_path: Path):
    """Property-based requests from our own OpenAPI schema against a real server (bounded, fixed seed).

    The v2 routes run without the positive-data check: a v2 tensor body has constraints JSON Schema cannot state
    (two inputs named text_a and text_b, each shape equal to its data's length), so a schema-valid body is often a
    correct 400; every other check (no 5xx, response and status conformance, negative data refused) still applies.
    """
    from tests.harness.server import running_server

    runs = [["--exclude-path-regex", "^/v2"], ["--include-path-regex", "^/v2", "--exclude-checks", "positive_data_acceptance"]]
    with running_server(int8_dir) as server:
        url = server.url
        for extra in runs:
            result = subprocess.run(
                [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", "50",
                 "--seed", "42", "--no-color", *extra],
                capture_output=True, text=True, timeout=240, cwd=tmp_path,  # its .schemathesis cache stays out of the tree
            )  # fmt: skip
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
            assert "No issues found" in result.stdout
