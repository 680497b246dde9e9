"""Counting a protobuf message's fields on the wire, before it is parsed (app/protocols/wire.py)."""

from __future__ import annotations

import pytest

from app.protocols import wire
from app.protocols.grpc_gen import open_inference_pb2 as pb
from app.protocols.v2_grpc import max_fields


def _request(pairs: int, outputs: int = 2) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id="1")
    request.parameters["threshold"].double_param = 0.5
    for name in ("text_a", "text_b"):
        tensor = request.inputs.add(name=name, datatype="BYTES", shape=[pairs])
        tensor.contents.bytes_contents.extend([b"a sentence"] * pairs)
    for i in range(outputs):
        request.outputs.add(name=f"out{i}")
    return request


def test_the_largest_request_the_deployment_admits_is_within_the_limit():
    limit = max_fields(64)
    assert wire.count_fields(_request(64).SerializeToString(), wire.INFER_REQUEST, limit) <= limit


@pytest.mark.parametrize(
    "request_",
    [
        _request(1, outputs=100_000),  # the output flood: one output named 100,000 times
        _request(2_000),  # nested: bytes_contents inside each input's contents
    ],
)
def test_a_flood_of_fields_is_counted_only_up_to_the_limit(request_: pb.ModelInferRequest):
    assert wire.count_fields(request_.SerializeToString(), wire.INFER_REQUEST, 512) == 513


def test_packed_numbers_count_by_their_bytes():
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="text_a", datatype="BYTES").shape.extend([1] * 1000)
    assert wire.count_fields(request.SerializeToString(), wire.INFER_REQUEST, 10_000) >= 1000


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", b"\x0a\x10abc", b"\x0b"])
def test_bytes_that_are_not_wire_format_are_malformed(raw: bytes):
    with pytest.raises(wire.Malformed):
        wire.count_fields(raw, wire.INFER_REQUEST, 512)
