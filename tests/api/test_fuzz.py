"""No client input, on either protocol, produces a 500: property-based fuzzing with generated bodies, most of them
not schema-valid (any JSON, deep nesting, huge integers, lone surrogates, wrong types, binary tails). Every answer
is a 200 or a 4xx in the error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from app.main import create_app
from tests.api.conftest import GatedRuntime, settings_for

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ODD_TEXT = ["", " ", "\u200b", "\ud800", "a\udfffb", "x" * 2001, "漢" * 3, "\x00", "word " * 300, "ok"]

plain_text = st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1, max_size=30)
texts = st.one_of(plain_text, plain_text, st.sampled_from(ODD_TEXT), st.text(max_size=40))  # any code point, surrogates too
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.floats(allow_nan=False), texts)
keys = st.sampled_from(["name", "data", "shape", "x", "pairs"])
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=12)
shapes = st.one_of(st.lists(st.one_of(st.integers(-2, 70), st.booleans(), st.sampled_from(["1", None, 1.5])), max_size=3), json_values)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` about four times in five: most bodies get past the wire format to the core's rules, some do not."""
    return st.one_of(good, good, good, good, bad)


@st.composite
def v2_tensors(draw: st.DrawFn, name: str, n: int) -> dict[str, Any]:
    rows = st.lists(texts, min_size=n, max_size=n)
    tensor: dict[str, Any] = {
        "name": draw(mostly(st.just(name), st.sampled_from(["text_c", "", "TEXT_A"]))),
        "shape": draw(mostly(st.sampled_from([[n], [n, 1]]), shapes)),
        "datatype": draw(mostly(st.just("BYTES"), st.sampled_from(["FP32", "bytes", "INT8"]))),
        "data": draw(
            mostly(
                st.one_of(rows, rows.map(lambda r: [[x] for x in r])),
                st.one_of(st.lists(st.lists(texts, max_size=2), max_size=3), json_values),
            )
        ),
    }
    if draw(st.integers(0, 5)) == 0:
        tensor["parameters"] = draw(st.one_of(st.integers(-1, 40).map(lambda k: {"binary_data_size": k}), json_values))
    return tensor


@st.composite
def v2_bodies(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 3))
    body: dict[str, Any] = {
        "inputs": [draw(v2_tensors("text_a", n)), draw(v2_tensors("text_b", draw(mostly(st.just(n), st.integers(0, 3)))))]
    }
    for key, value in (("id", st.one_of(texts, json_values)), ("outputs", json_values), ("parameters", json_values)):
        if draw(st.integers(0, 3)) == 0:
            body[key] = draw(value)
    if draw(st.integers(0, 9)) == 0:
        body["inputs"] = draw(json_values)
    return body


@st.composite
def predict_bodies(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    sentence = mostly(texts, scalars)
    pairs = draw(
        mostly(st.lists(st.fixed_dictionaries({"sentence1": sentence, "sentence2": sentence}), min_size=1, max_size=3), json_values)
    )
    body: dict[str, Any] = {"pairs": pairs}
    if draw(st.integers(0, 3)) == 0:
        body["threshold"] = draw(mostly(st.floats(0, 1), scalars))
    if draw(st.integers(0, 3)) == 0:
        body["return_logits"] = draw(mostly(st.booleans(), scalars))
    return body


def raw_bodies(structured: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON text of a generated body (escaping lone surrogates), or that text cut, nested 5,000 deep, given a huge
    integer, or followed by binary bytes."""
    encoded = structured.map(lambda b: json.dumps(b).encode())
    return st.one_of(
        encoded,
        encoded.flatmap(lambda raw: st.integers(0, len(raw)).map(lambda i: raw[:i])),
        st.one_of(st.integers(1, 50), st.sampled_from([999, 1000, 5000, 50_000])).map(lambda n: b"[" * n + b"]" * n),
        st.sampled_from([1000, 5000]).map(lambda n: b'{"inputs": [{"name": "text_a", "data": ' + b"[" * n + b"]" * n + b"}]}"),
        st.integers(1, 3).map(lambda k: b'{"inputs": [{"name": "text_a", "shape": [' + b"9" * (4300 * k) + b"]}]}"),
        st.tuples(encoded, st.binary(max_size=40)).map(lambda t: t[0] + t[1]),
    )


@pytest.fixture(scope="module")
def fuzz_client(tiny_artifacts: Path) -> Iterator[TestClient]:
    runtime = GatedRuntime.load(tiny_artifacts / "int8-calibrated")
    runtime.gate, runtime.entered = __import__("threading").Event(), __import__("threading").Event()
    runtime.gate.set()
    app = create_app(settings_for(tiny_artifacts / "int8-calibrated"), runtime=runtime, registry=CollectorRegistry())
    with TestClient(app) as client:
        yield client


def assert_answered(r: Any) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error", "error_type"} and body["error"] and body["error_type"] != "internal", body


@FUZZ
@given(raw=raw_bodies(v2_bodies()), binary_header=st.one_of(st.none(), st.integers(-5, 400).map(str), st.sampled_from(["x", ""])))
def test_no_v2_body_is_a_500(fuzz_client: TestClient, raw: bytes, binary_header: str | None):
    headers = {"inference-header-content-length": binary_header} if binary_header is not None else {}
    assert_answered(fuzz_client.post("/v2/models/tiny/infer", content=raw, headers=headers))


@FUZZ
@given(raw=raw_bodies(predict_bodies()))
def test_no_predict_body_is_a_500(fuzz_client: TestClient, raw: bytes):
    assert_answered(fuzz_client.post("/predict", content=raw, headers={"content-type": "application/json"}))
