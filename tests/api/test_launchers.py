"""One path for every request, one start for every launcher: both protocols reach the same core and the same
domain errors; an abandoned v2 request frees its queue room as /predict's does; `uvicorn --factory` and a Ray Serve
replica start like `python -m app`, the AVX2 fallback included."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.main import create_app
from tests.api.conftest import GatedRuntime, settings_for
from tests.harness.server import free_port, wait_ready

JSON = {"content-type": "application/json"}


def v2_body(a: list[str], b: list[str]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "text_a", "shape": [len(a)], "datatype": "BYTES", "data": a},
            {"name": "text_b", "shape": [len(b)], "datatype": "BYTES", "data": b},
        ]
    }


@pytest.mark.parametrize(
    ("first", "second", "problem"),
    [
        ("", "b", "0 characters; 1 to 2000 allowed"),
        ("x" * 2001, "b", "2001 characters; 1 to 2000 allowed"),
        ("\u200b\u200d", "b", "has no character the tokenizer keeps"),
        ("\ud800", "b", "is not valid Unicode text (it holds a lone surrogate code point)"),
    ],
)
def test_the_same_invalid_pair_is_the_same_domain_error_in_each_protocols_shape(client: TestClient, first: str, second: str, problem: str):
    predict = client.post(
        "/predict",
        content=json.dumps({"pairs": [{"sentence1": "ok", "sentence2": "ok"}, {"sentence1": first, "sentence2": second}]}),
        headers=JSON,
    )
    v2 = client.post("/v2/models/tiny/infer", content=json.dumps(v2_body(["ok", first], ["ok", second])))
    assert (predict.status_code, v2.status_code) == (422, 400)  # each protocol's status for an invalid request
    assert predict.json()["error_type"] == v2.json()["error_type"] == "validation"
    assert predict.json()["error"].startswith(f"pairs.1.sentence1: {problem}")  # the place, in each protocol's terms
    assert v2.json()["error"].startswith(f"input text_a[1]: {problem}")


def test_too_many_pairs_is_the_same_error_in_both_protocols(client: TestClient):
    predict = client.post("/predict", json={"pairs": [{"sentence1": "a", "sentence2": "b"}] * 65})
    v2 = client.post("/v2/models/tiny/infer", json=v2_body(["a"] * 65, ["b"] * 65))
    assert predict.json() == v2.json() == {"error": "65 pairs; 1 to 64 allowed per request", "error_type": "validation"}


def test_an_abandoned_v2_request_frees_its_queue_room(int8_dir: Path, runtime: GatedRuntime):
    from asgi_lifespan import LifespanManager

    app = create_app(settings_for(int8_dir, max_batch_wait_ms=0), runtime=runtime, registry=CollectorRegistry())
    body = json.dumps(v2_body(["c"] * 5, ["d"] * 5)).encode()

    async def scenario() -> tuple[int, int, list[dict[str, Any]]]:
        async with LifespanManager(app) as manager:
            service = app.state.service
            runtime.gate.clear()
            runtime.entered.clear()
            blocker = asyncio.ensure_future(service.score([("a", "b")] * 8))  # holds the only worker
            while not runtime.entered.is_set():
                await asyncio.sleep(0.01)
            left, delivered, sent = asyncio.Event(), False, []

            async def receive() -> dict[str, Any]:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await left.wait()  # the client goes away while its rows wait behind the blocker
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                "path": "/v2/models/tiny/infer", "raw_path": b"/v2/models/tiny/infer", "query_string": b"", "root_path": "",
                "headers": [(b"content-length", str(len(body)).encode())], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
            }  # fmt: skip
            call = asyncio.ensure_future(manager.app(scope, receive, send))
            for _ in range(500):
                if service.get().batcher.depth == 5:
                    break
                await asyncio.sleep(0.01)
            waiting = service.get().batcher.depth
            left.set()
            await asyncio.wait_for(call, 10)
            after = service.get().batcher.depth
            runtime.gate.set()
            await blocker
            return waiting, after, sent

    waiting, after, sent = asyncio.run(scenario())
    assert (waiting, after) == (5, 0)
    assert sent[0]["status"] == 499  # client_closed_request: written for the log and metrics, received by nobody


def with_8x8_widths(source: Path, target: Path) -> Path:
    """A copy of int8-calibrated whose manifest says 8-bit weights: what an AVX2-only CPU cannot run exactly."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["int8"]["weight_bits"] = 8
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture
def vnni_only_root(tiny_artifacts: Path, tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    with_8x8_widths(tiny_artifacts / "int8-calibrated", root / "int8-calibrated")
    shutil.copytree(tiny_artifacts / "int8", root / "int8")
    return root


AVX2 = {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_uvicorn_factory_serves_the_fallback_when_the_configured_variant_cannot_run(vnni_only_root: Path):
    port = free_port()
    env = dict(os.environ, **AVX2, PARASERVE_ARTIFACT_DIR=str(vnni_only_root / "int8-calibrated"), PARASERVE_WORKERS="1")
    command = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", 120, process)
        model = httpx.get(f"http://127.0.0.1:{port}/model").json()
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=60)
    assert model["variant"] == "int8" and model["cpu"]["int8_kernel"] == "avx2"
    fallback = next(line for line in log.splitlines() if "serving int8 from int8/ instead" in line)  # one line says which and why
    assert "WARNING" in fallback and "saturates 8-bit activations x 8-bit weights" in fallback


REPLICA = """
import asyncio, json, sys
import httpx
from asgi_lifespan import LifespanManager
from deploy.ray.replica import replica_app, replica_settings

async def main():
    app = replica_app(replica_settings({"artifact_dir": sys.argv[1]}))
    async with LifespanManager(app) as manager:  # Ray Serve runs the ASGI lifespan in the replica
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://replica") as client:
            print(json.dumps((await client.get("/model")).json()))

asyncio.run(main())
"""


@pytest.mark.slow
def test_a_ray_replica_serves_the_fallback_when_the_configured_variant_cannot_run(vnni_only_root: Path):
    result = subprocess.run(
        [sys.executable, "-c", REPLICA, str(vnni_only_root / "int8-calibrated")],
        env=dict(os.environ, **AVX2),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    model = json.loads(result.stdout.strip().splitlines()[-1])
    assert model["variant"] == "int8" and model["workers"] == 1 and model["cpu"]["int8_kernel"] == "avx2"
