"""Every client mistake gets a 4xx in the one error shape, never a 500."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

OK_PAIR = {"sentence1": "a", "sentence2": "b"}


def expect(r, status: int, error_type: str) -> None:
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "error_type"}
    assert r.json()["error_type"] == error_type
    assert r.json()["error"]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"pairs": []}, "0 pairs; 1 to 64 allowed per request"),
        ({"pairs": [{"sentence1": "", "sentence2": "b"}]}, "pairs.0.sentence1"),
        ({"pairs": [{"sentence1": "   \t\n", "sentence2": "b"}]}, "pairs.0.sentence1"),
        ({"pairs": [OK_PAIR, {"sentence1": "a", "sentence2": "\u200b\u200b"}]}, "pairs.1.sentence2: has no character the tokenizer keeps"),
        ({"pairs": [{"sentence1": "\x00\x01\x1c", "sentence2": "b"}]}, "pairs.0.sentence1: has no character the tokenizer keeps"),
        ({"pairs": [{"sentence1": "\u0301" * 2000, "sentence2": "b"}]}, "pairs.0.sentence1: has no character the tokenizer keeps"),
        ({"pairs": [{"sentence1": 42, "sentence2": "b"}]}, "valid string"),
        ({"pairs": [{"sentence1": None, "sentence2": "b"}]}, "valid string"),
        ({"pairs": [{"sentence1": ["a"], "sentence2": "b"}]}, "valid string"),
        ({"pairs": [{"sentence1": "a"}]}, "pairs.0.sentence2: Field required"),
        ({"pairs": [dict(OK_PAIR, extra="x")]}, "Extra inputs are not permitted"),
        ({"pairs": [OK_PAIR], "modell": "tiny"}, "Extra inputs are not permitted"),
        ({"pairs": [{"sentence1": "x" * 2001, "sentence2": "b"}]}, "pairs.0.sentence1: 2001 characters; 1 to 2000 allowed"),
        ({"pairs": [OK_PAIR, {"sentence1": "a", "sentence2": "\ud800"}]}, "pairs.1.sentence2: is not valid Unicode text"),
        ({"pairs": [OK_PAIR] * 65}, "65 pairs; 1 to 64 allowed per request"),
        ({"pairs": "a,b"}, "valid list"),
        ([OK_PAIR], "valid dictionary"),
        ({}, "pairs: Field required"),
    ],
)
def test_schema_violations_are_422(client: TestClient, payload, fragment: str):
    # json.dumps escapes non-ASCII (a lone surrogate included) as \uXXXX, as a client's JSON encoder may
    r = client.post("/predict", content=json.dumps(payload), headers={"content-type": "application/json"})
    expect(r, 422, "validation")
    assert fragment in r.json()["error"]


def test_a_100k_character_sentence_is_rejected_before_tokenization(client: TestClient):
    def tokenized() -> float:
        text = client.get("/metrics").text
        return next(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith('paraserve_tokenize_duration_seconds_count{model="tiny"}')
        )

    before = tokenized()
    expect(client.post("/predict", json={"pairs": [{"sentence1": "word " * 20000, "sentence2": "b"}]}), 422, "validation")
    assert tokenized() == before  # refused by its length: the tokenizer never read it


def test_ten_thousand_pairs_are_rejected(client: TestClient):
    r = client.post("/predict", json={"pairs": [OK_PAIR] * 10_000})
    assert r.status_code in (413, 422)


def test_invalid_json_is_400(client: TestClient):
    r = client.post("/predict", content=b'{"pairs": [', headers={"content-type": "application/json"})
    expect(r, 400, "invalid_json")


def test_invalid_utf8_is_400(client: TestClient):
    raw = b'{"pairs": [{"sentence1": "\xff\xfe", "sentence2": "b"}]}'
    r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error_type"] in ("bad_request", "invalid_json")


def test_deeply_nested_json_is_a_client_error(client: TestClient):
    r = client.post("/predict", content=b"[" * 100_000 + b"]" * 100_000, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    assert "error_type" in r.json()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
def test_wrong_content_type_is_415(client: TestClient, content_type: str | None):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/predict", content=json.dumps({"pairs": [OK_PAIR]}).encode(), headers=headers)
    expect(r, 415, "unsupported_media_type")


def test_json_with_charset_is_accepted(client: TestClient):
    r = client.post(
        "/predict", content=json.dumps({"pairs": [OK_PAIR]}).encode(), headers={"content-type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 200


def test_a_10mb_body_is_413_by_content_length(client: TestClient):
    r = client.post("/predict", content=b" " * (10 * 1024 * 1024), headers={"content-type": "application/json"})
    expect(r, 413, "payload_too_large")


def test_a_streamed_body_over_the_limit_is_413(client: TestClient):
    def chunks():
        for _ in range(20):
            yield b" " * 100_000

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    expect(r, 413, "payload_too_large")


def test_unknown_route_and_method(client: TestClient):
    expect(client.get("/nope"), 404, "not_found")
    expect(client.get("/predict"), 405, "method_not_allowed")
