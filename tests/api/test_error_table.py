"""One error table for every protocol: the same invalid input sent over /predict, REST v2 and gRPC is the protocol's
own status (422, 400, INVALID_ARGUMENT) and the same `error_type` in paraserve_errors_total."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx

from app.protocols.grpc_gen import open_inference_pb2 as pb
from app.shared import errors
from tests.harness.attacks.grpc_edge import INFER, infer_request
from tests.harness.scrape import metric_sum, samples
from tests.harness.server import free_port, running_server

EMPTY = ("The cat sat.", "")


def validation_errors(url: str) -> float:
    return metric_sum(samples(httpx.get(f"{url}/metrics", timeout=10).text), "paraserve_errors_total", error_type="validation")


def test_one_invalid_pair_is_the_same_error_type_on_every_protocol(tiny_artifacts: Path):
    with running_server(tiny_artifacts / "int8-calibrated", grpc_port=str(free_port())) as server:
        before = validation_errors(server.url)
        predict = httpx.post(f"{server.url}/predict", json={"pairs": [{"sentence1": EMPTY[0], "sentence2": EMPTY[1]}]}, timeout=30)
        assert predict.status_code == 422 and predict.json()["error_type"] == "validation"
        assert predict.json()["error"].startswith("pairs.0.sentence2:")
        body = {
            "inputs": [
                {"name": "text_a", "shape": [1], "datatype": "BYTES", "data": [EMPTY[0]]},
                {"name": "text_b", "shape": [1], "datatype": "BYTES", "data": [EMPTY[1]]},
            ]
        }
        rest = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=30)
        assert rest.status_code == 400 and rest.json()["error_type"] == "validation"
        assert rest.json()["error"].startswith("input text_b[0]:")
        with grpc.insecure_channel(server.grpc) as channel:
            call = channel.unary_unary(INFER, request_serializer=pb.ModelInferRequest.SerializeToString)
            try:
                call(infer_request("tiny", [EMPTY]), timeout=30)
                raise AssertionError("an empty sentence was accepted over gRPC")
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT and exc.details().startswith("input text_b[0]:")
        assert validation_errors(server.url) == before + 3


def test_every_domain_error_has_one_row_of_the_table():
    domain = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.ServiceError)]
    assert all(errors.kind_of(cls("x") if cls is not errors.InvalidPair else cls(0, 0, "x")) is not errors.INTERNAL for cls in domain[1:])
    kinds = {errors.kind_of(errors.Overloaded("x")), errors.kind_of(errors.TooManyConnections("x"))}
    assert {k.grpc for k in kinds} == {"RESOURCE_EXHAUSTED"}
