from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.main import create_app
from app.shared.config import Settings
from artifact.encoding import EncodedPair
from artifact.runtime import BatchResult, Runtime


class GatedRuntime(Runtime):
    """The real runtime, with a gate the test can close (to fill the queue) and a switch to make forward raise."""

    gate: threading.Event
    entered: threading.Event
    fail: bool = False

    def forward(self, rows: Sequence[EncodedPair]) -> BatchResult:
        self.entered.set()
        assert self.gate.wait(10), "the test left the gate closed"
        if self.fail:
            raise RuntimeError("injected failure")
        return super().forward(rows)


@pytest.fixture
def int8_dir(tiny_artifacts: Path) -> Path:
    return tiny_artifacts / "int8"


@pytest.fixture
def runtime(int8_dir: Path) -> GatedRuntime:
    rt = GatedRuntime.load(int8_dir)
    rt.gate = threading.Event()
    rt.gate.set()
    rt.entered = threading.Event()
    return rt


def settings_for(artifact_dir: Path, **overrides: object) -> Settings:
    # One worker unless a test asks for more: the default (the host's CPUs) would make queue-filling tests host-dependent.
    values: dict[str, object] = {"max_batch_wait_ms": 2, "workers": 1, **overrides}
    return Settings(artifact_dir=artifact_dir, **values)


@pytest.fixture
def client(int8_dir: Path, runtime: GatedRuntime) -> Iterator[TestClient]:
    app = create_app(settings_for(int8_dir), runtime=runtime, registry=CollectorRegistry())
    with TestClient(app) as c:
        yield c
