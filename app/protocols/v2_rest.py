"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) REST routes over the same service and batcher as /predict.

The model takes two BYTES tensors, `text_a` and `text_b` (shape [N], or [N, 1]), and answers `probabilities`
(FP32 [N, 2]: not_paraphrase, paraphrase), `label` (BYTES [N]), `score` (FP32 [N], P(paraphrase)), `tokens`
(INT32 [N]) and `truncated` (BOOL [N]). Inputs may come as JSON `data` or with the binary tensor data extension
(`Inference-Header-Content-Length`, each BYTES element a 4-byte little-endian length and its bytes), which
tritonclient uses by default; outputs are always JSON `data`. A request without a Content-Type (tritonclient sends
none) is read as JSON. Errors are the protocol's `{"error": "..."}` (with paraserve's `error_type` beside it), 400
for every invalid request.

A translator and nothing more: this module turns tensors into pairs and the core's answers into tensors; the limits
(pairs per request, characters per sentence, sentences the tokenizer keeps), admission, the client-left rule and
counting are the core's (`PredictionService.score`), the same as /predict's.

No `from __future__ import annotations` here: FastAPI must see the types itself.
"""

import json
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from app.core.service import PredictionService
from app.core.validation import MAX_THRESHOLD, MIN_THRESHOLD, Scored, shown
from app.protocols import oip
from app.protocols.http_common import ServiceDep, client_of, disconnect_of
from app.protocols.oip import OUTPUTS
from app.shared.errors import InvalidInput
from artifact.encoding import DECISION_THRESHOLD

HEADER_LENGTH = "inference-header-content-length"
PREFIX = "/v2"
# Every invalid request is a 400 in this protocol; a bad pair is named by its tensor and element.
DIALECT = oip.DIALECT  # every invalid request is a 400; a bad pair is named by its tensor and element


class Tensor(BaseModel):
    """One input tensor of an inference request (`data` in JSON, or `parameters.binary_data_size` bytes after it)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="text_a or text_b")
    shape: list[StrictInt] = Field(description="[N] or [N, 1]", min_length=1, max_length=2)
    datatype: str = Field(description="BYTES")
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="N UTF-8 strings; for shape [N, 1] also N lists of one string")


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """POST /v2/models/{name}/infer."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {"name": "text_a", "shape": [1], "datatype": "BYTES", "data": ["The cat sat on the mat."]},
                        {"name": "text_b", "shape": [1], "datatype": "BYTES", "data": ["A cat was sitting on the mat."]},
                    ],
                }
            ]
        },
    )
    id: str | None = Field(None, max_length=256, description="Echoed in the response")
    model_name: str | None = Field(None, max_length=256, description="Sent by KServe's client; must match the path's name")
    model_version: str | None = Field(None, max_length=256, description="Must match the path's version when both are given")
    inputs: list[Tensor] = Field(min_length=2, max_length=2)
    outputs: list[RequestedOutput] | None = Field(None, description=f"Subset of {', '.join(OUTPUTS)}; default all")
    parameters: dict[str, Any] | None = Field(
        None, description=f"`threshold` ({MIN_THRESHOLD}-{MAX_THRESHOLD}, default {DECISION_THRESHOLD}) for `label`"
    )


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Health(BaseModel):
    live: bool | None = None
    ready: bool | None = None


class ModelReady(BaseModel):
    name: str
    ready: bool


V2_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid inference request (tensors, shapes, limits)"},
    404: {"description": "No such model or version"},
    429: {"description": "Queue full: retry after Retry-After"},
    503: {"description": "Not ready, or shutting down"},
}


# ---- handlers: module level, registered by build_v2_router ------------------------------------------------------


async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=oip.SERVER_NAME, version=oip.SERVER_VERSION, extensions=["binary_tensor_data"])


async def live() -> Health:
    return Health(live=True)


async def ready(service: ServiceDep, response: Response) -> Health:
    if not service.is_ready:
        response.status_code = 503
    return Health(ready=service.is_ready)


def _metadata(service: PredictionService, name: str, version: str | None = None) -> ModelMetadata:
    meta = oip.model_metadata(service, name, version)
    return ModelMetadata(
        name=meta.name,
        versions=meta.versions,
        platform=meta.platform,
        inputs=[TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
        outputs=[TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
    )


def _model_ready(service: PredictionService, response: Response, name: str, version: str | None = None) -> ModelReady:
    if not service.is_ready:  # starting, draining or dead: no model is ready, whatever its name
        response.status_code = 503
        return ModelReady(name=name, ready=False)
    oip.check_model(service, name, version)
    return ModelReady(name=name, ready=True)


async def _infer(service: PredictionService, request: Request, name: str, version: str | None = None) -> InferResponse:
    oip.check_model(service, name, version)
    body = parse_infer_request(await request.body(), request.headers.get(HEADER_LENGTH), service.limits.max_pairs)
    if body.model_name is not None and body.model_name != name:
        raise InvalidInput(f"the body names model {shown(body.model_name)} but the path {shown(name)}")
    scored, wanted = await oip.infer(
        service,
        name,
        body.model_version or version,
        [oip.InputTensor(t.name, t.datatype, t.shape, t.data) for t in body.inputs],
        [o.name for o in body.outputs or []],
        (body.parameters or {}).get("threshold"),
        client=client_of(request, service.settings.client_id_header),
        gone=disconnect_of(request),
    )
    return InferResponse(
        model_name=scored.model.name, model_version=scored.model.version, id=body.id, outputs=output_tensors(scored, wanted)
    )


async def model_metadata(service: ServiceDep, name: str) -> ModelMetadata:
    return _metadata(service, name)


async def version_metadata(service: ServiceDep, name: str, version: str) -> ModelMetadata:
    return _metadata(service, name, version)


async def model_ready(service: ServiceDep, response: Response, name: str) -> ModelReady:
    return _model_ready(service, response, name)


async def version_ready(service: ServiceDep, response: Response, name: str, version: str) -> ModelReady:
    return _model_ready(service, response, name, version)


async def model_infer(service: ServiceDep, request: Request, name: str) -> InferResponse:
    return await _infer(service, request, name)


async def version_infer(service: ServiceDep, request: Request, name: str, version: str) -> InferResponse:
    return await _infer(service, request, name, version)


def output_tensors(scored: Scored, wanted: list[str]) -> list[OutputTensor]:
    values = oip.output_values(scored)
    return [OutputTensor(name=o, shape=values[o][0], datatype=OUTPUTS[o], data=values[o][1]) for o in wanted]


def build_v2_router(guard: Any) -> APIRouter:
    """The v2 routes; `guard` is the same API-key dependency as /predict's: on every route that names a model (metadata,
    readiness, inference: they would tell which model names exist), not on the server's health."""
    router = APIRouter(prefix=PREFIX, tags=["Open Inference Protocol v2"])
    protected = {"dependencies": [Depends(guard)], "responses": V2_ERRORS}
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(InferRequest)}}}}
    router.add_api_route("", server_metadata, methods=["GET"], summary="Server metadata")
    router.add_api_route("/health/live", live, methods=["GET"], summary="Server liveness", response_model_exclude_none=True)
    router.add_api_route(
        "/health/ready",
        ready,
        methods=["GET"],
        summary="Server readiness",
        responses={503: {"model": Health}},
        response_model_exclude_none=True,
    )
    routes = (
        ("", "", model_metadata, model_ready, model_infer),
        ("/versions/{version}", " (a version)", version_metadata, version_ready, version_infer),
    )
    for suffix, what, metadata, is_ready, infer in routes:
        base = "/models/{name}" + suffix
        router.add_api_route(base, metadata, methods=["GET"], summary="Model metadata" + what, **protected)
        router.add_api_route(base + "/ready", is_ready, methods=["GET"], summary="Model readiness" + what, **protected)
        router.add_api_route(base + "/infer", infer, methods=["POST"], summary="Inference" + what, openapi_extra=body_doc, **protected)
    return router


def pin_models(schema: dict[str, Any], versions: dict[str, str]) -> dict[str, Any]:
    """The OpenAPI document with the served models' names and versions as the only values of the v2 path parameters,
    so clients and fuzzers see which models this server serves."""
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith(PREFIX + "/models/"):
            continue
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") in ("name", "version"):
                    values = list(versions) if parameter["name"] == "name" else sorted(set(versions.values()))
                    parameter.setdefault("schema", {})["enum"] = values
    return schema


def parse_infer_request(raw: bytes, header_length: str | None, max_pairs: int) -> InferRequest:
    """The JSON header (all of the body, or its first Inference-Header-Content-Length bytes) with binary inputs inlined.

    Every way a body can be malformed is an InvalidInput (400): not JSON, nested too deeply to parse, a number
    Python refuses to convert (an integer of over 4,300 digits), the wrong fields or types, binary sizes that do not fit.
    """
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} is not a number: {shown(header_length)}") from None
        if not 0 <= size <= len(raw):
            raise InvalidInput(f"{HEADER_LENGTH} {size} is beyond the {len(raw)}-byte body")
        raw, binary = raw[:size], raw[size:]
    try:
        document = json.loads(raw)
    except RecursionError:
        raise InvalidInput("the inference request is nested too deeply to parse") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and int() of a number over 4,300 digits
        raise InvalidInput(f"the inference request is not valid JSON: {str(exc)[:200]}") from None
    try:
        request = InferRequest.model_validate(document)
    except (ValidationError, RecursionError) as exc:
        if isinstance(exc, RecursionError):
            raise InvalidInput("the inference request is nested too deeply to parse") from None
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidInput(f"{where[:100]}: {first.get('msg')}") from None
    offset = 0
    for tensor in request.inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise InvalidInput(
                f"input {shown(tensor.name)}: binary_data_size {shown(size)} does not fit the {len(binary) - offset} bytes left"
            )
        oip.check_shape(tensor.name, tensor.shape, max_pairs)
        tensor.data = oip.decode_bytes_tensor(binary[offset : offset + size], tensor.name, max_pairs)
        offset += size
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    return request


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with every $ref replaced by its definition (OpenAPI requestBody without components)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)
