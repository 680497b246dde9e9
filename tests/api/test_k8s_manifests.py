"""The Kubernetes manifests must point at what the service really exposes: probe paths, port, metric names, grace."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]


def rendered(overlay: str) -> dict[str, dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed here (.ci/run renders and validates the manifests with it)")
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "k8s" / overlay)], capture_output=True, text=True, check=True
    ).stdout
    return {doc["kind"]: doc for doc in yaml.safe_load_all(out)}


@pytest.mark.parametrize("overlay", ["base", "overlays/example"])
def test_manifests_match_the_service(overlay: str, client: TestClient):
    docs = rendered(overlay)
    pod = docs["Deployment"]["spec"]["template"]
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = container["ports"][0]["containerPort"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"PARASERVE_PORT={port}" in dockerfile and pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    for probe in ("startupProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert client.get(path).status_code == 200, (probe, path)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" and container["startupProbe"]["httpGet"]["path"] == "/readyz"
    # Readiness through gRPC's standard health service, on the port the service's gRPC server listens on
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["grpc"]["port"] == ports["grpc"] == int(env["PARASERVE_GRPC_PORT"])
    assert {p["name"] for p in docs["Service"]["spec"]["ports"]} == {"http", "grpc"}
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > float(env["PARASERVE_SHUTDOWN_GRACE_S"]) + pause
    resources = container["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == env["PARASERVE_WORKERS"]
    assert spec["automountServiceAccountToken"] is False and spec["securityContext"]["runAsNonRoot"] is True
    assert f"--uid {spec['securityContext']['runAsUser']}" in dockerfile
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    exposed = {s.name for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    hpa_metric = docs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert hpa_metric in exposed
    rules = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["rules"]
    assert {re.match(r"[a-z_]+", r["seriesQuery"].strip("'")).group(0) for r in rules} <= exposed
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
