"""The shipped Grafana dashboard may only query metrics the service really exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "paraserve.json"
PROMQL_WORDS = {"sum", "max", "by", "rate", "histogram_quantile", "le", "deployment", "status", "error_type", "route", "job", "worker",
                "reason", "method", "code", "name", "variant", "engine", "int8_kernel", "sha256"}  # fmt: skip


def test_every_dashboard_query_uses_exposed_metric_names(client: TestClient):
    client.post("/predict", json={"pairs": [{"sentence1": "a", "sentence2": "b"}]})
    client.post("/predict", json={"pairs": []})  # so the error counter has a sample too
    exposed = {s.name for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        bare = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', "", expr)  # drop label matchers, strings, ranges
        names = {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if w not in PROMQL_WORDS}
        assert names, expr
        assert names <= exposed, f"{expr}: {sorted(names - exposed)} not exposed"
