"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) REST routes over the same service and batcher as /predict.

The model takes two BYTES tensors, `text_a` and `text_b` (shape [N], or [N, 1]), and answers `probabilities`
(FP32 [N, 2]: not_paraphrase, paraphrase), `label` (BYTES [N]), `score` (FP32 [N], P(paraphrase)), `tokens`
(INT32 [N]) and `truncated` (BOOL [N]). The limits of /predict apply (pairs per request, characters per sentence,
body bytes, sentences the tokenizer keeps). Inputs may come as JSON `data` or with the binary tensor data extension
(`Inference-Header-Content-Length`, each BYTES element a 4-byte little-endian length and its bytes), which
tritonclient uses by default; outputs are always JSON `data`. A request without a Content-Type (tritonclient sends
none) is read as JSON. Errors are the protocol's `{"error": "..."}` (with paraserve's `error_type` beside it).

No `from __future__ import annotations` here: FastAPI must see the types itself.
"""

import json
import re
import struct
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.config import Settings
from app.errors import InvalidInput, ModelNotFound
from app.schemas import MAX_THRESHOLD, MIN_THRESHOLD
from app.service import PredictionService
from artifact.encoding import DECISION_THRESHOLD, LABELS, label_for, visible_pattern

INPUTS = ("text_a", "text_b")
OUTPUTS = {"probabilities": "FP32", "label": "BYTES", "score": "FP32", "tokens": "INT32", "truncated": "BOOL"}
HEADER_LENGTH = "inference-header-content-length"
PROTOCOL_VERSION = "2"


class Tensor(BaseModel):
    """One input tensor of an inference request (`data` in JSON, or `parameters.binary_data_size` bytes after it)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="text_a or text_b")
    shape: list[int] = Field(description="[N] or [N, 1]", min_length=1, max_length=2)
    datatype: str = Field(description="BYTES")
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="N UTF-8 strings (nested lists are flattened, row-major)")


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


def build_v2_router(settings: Settings, guard: Any, model: tuple[str, str] | None = None) -> APIRouter:
    """The v2 routes; `guard` is the same API-key dependency as /predict's.

    `model` (name, version), when known as the app is made, is stated in the OpenAPI document as the only values of
    the path parameters, so clients and fuzzers see which model this server serves.
    """
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
    protected = [Depends(guard)]
    keeps_a_token = re.compile(visible_pattern())

    async def service_of(request: Request) -> PredictionService:
        service: PredictionService = request.app.state.service
        return service

    Service = Annotated[PredictionService, Depends(service_of)]

    def model_or_404(service: PredictionService, name: str, version: str | None = None) -> None:
        service.require_ready()
        runtime = service.runtime
        if name != runtime.name:
            raise ModelNotFound(f"no model named {name!r}; this server serves {runtime.name!r}")
        if version is not None and version != runtime.sha256[:12]:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; it has {runtime.sha256[:12]!r}")

    @router.get("", summary="Server metadata")
    async def server_metadata() -> ServerMetadata:
        return ServerMetadata(name="paraserve", version="0.1.0", extensions=["binary_tensor_data"])

    @router.get("/health/live", summary="Server liveness", response_model_exclude_none=True)
    async def live() -> Health:
        return Health(live=True)

    @router.get("/health/ready", summary="Server readiness", responses={503: {"model": Health}}, response_model_exclude_none=True)
    async def ready(service: Service, response: Response) -> Health:
        if not service.is_ready:
            response.status_code = 503
        return Health(ready=service.is_ready)

    async def metadata(service: PredictionService, name: str, version: str | None = None) -> ModelMetadata:
        model_or_404(service, name, version)
        runtime = service.runtime
        inputs = [TensorMetadata(name=n, datatype="BYTES", shape=[-1]) for n in INPUTS]
        shapes = {"probabilities": [-1, len(LABELS)]}
        outputs = [TensorMetadata(name=n, datatype=t, shape=shapes.get(n, [-1])) for n, t in OUTPUTS.items()]
        return ModelMetadata(
            name=runtime.name,
            versions=[runtime.sha256[:12]],
            platform=f"pytorch_torchscript_{runtime.variant}",
            inputs=inputs,
            outputs=outputs,
        )

    async def model_ready(service: PredictionService, response: Response, name: str, version: str | None = None) -> ModelReady:
        if not service.is_ready:  # starting, draining or dead: no model is ready, whatever its name
            response.status_code = 503
            return ModelReady(name=name, ready=False)
        model_or_404(service, name, version)
        return ModelReady(name=name, ready=True)

    async def infer(service: PredictionService, request: Request, name: str, version: str | None = None) -> InferResponse:
        model_or_404(service, name, version)
        body = parse_infer_request(await request.body(), request.headers.get(HEADER_LENGTH))
        if body.model_name is not None and body.model_name != name:
            raise InvalidInput(f"the body names model {body.model_name!r} but the path {name!r}")
        if body.model_version is not None:
            model_or_404(service, name, body.model_version)
        a, b = tensor_strings(body, settings, keeps_a_token)
        threshold = requested_threshold(body)
        wanted = [o.name for o in body.outputs] if body.outputs else list(OUTPUTS)
        unknown = [n for n in wanted if n not in OUTPUTS]
        if unknown:
            raise InvalidInput(f"unknown output(s) {', '.join(unknown)}; this model has {', '.join(OUTPUTS)}")
        outcome = await service.predict(list(zip(a, b, strict=True)))
        n = len(a)
        values: dict[str, tuple[list[int], list[Any]]] = {
            "probabilities": ([n, 2], [p for s in outcome.scores for p in (1.0 - s, s)]),
            "label": ([n], [label_for(s, threshold) for s in outcome.scores]),
            "score": ([n], list(outcome.scores)),
            "tokens": ([n], list(outcome.tokens)),
            "truncated": ([n], list(outcome.truncated)),
        }
        for label in values["label"][1]:
            service.metrics.predictions.labels(label=label).inc()
        outputs = [OutputTensor(name=o, shape=values[o][0], datatype=OUTPUTS[o], data=values[o][1]) for o in wanted]
        runtime = service.runtime
        return InferResponse(model_name=runtime.name, model_version=runtime.sha256[:12], id=body.id, outputs=outputs)

    # The served model's name and version as the only values of the path parameters, when known as the app is made.
    name_doc = {"enum": [model[0]]} if model else None
    version_doc = {"enum": [model[1]]} if model else None
    Name = Annotated[str, Path(description="The model's name (GET /v2/models/{name})", json_schema_extra=name_doc)]
    Version = Annotated[str, Path(description="The model's version: its sha256 prefix", json_schema_extra=version_doc)]
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(InferRequest)}}}}
    routes = {"dependencies": protected, "responses": V2_ERRORS}

    @router.get("/models/{name}", summary="Model metadata", **routes)
    async def model_metadata(service: Service, name: Name) -> ModelMetadata:
        return await metadata(service, name)

    @router.get("/models/{name}/versions/{version}", summary="Model metadata (a version)", **routes)
    async def version_metadata(service: Service, name: Name, version: Version) -> ModelMetadata:
        return await metadata(service, name, version)

    @router.get("/models/{name}/ready", summary="Model readiness", responses=V2_ERRORS)
    async def model_is_ready(service: Service, response: Response, name: Name) -> ModelReady:
        return await model_ready(service, response, name)

    @router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (a version)", responses=V2_ERRORS)
    async def version_is_ready(service: Service, response: Response, name: Name, version: Version) -> ModelReady:
        return await model_ready(service, response, name, version)

    @router.post("/models/{name}/infer", summary="Inference", openapi_extra=body_doc, **routes)
    async def model_infer(service: Service, request: Request, name: Name) -> InferResponse:
        return await infer(service, request, name)

    @router.post("/models/{name}/versions/{version}/infer", summary="Inference (a version)", openapi_extra=body_doc, **routes)
    async def version_infer(service: Service, request: Request, name: Name, version: Version) -> InferResponse:
        return await infer(service, request, name, version)

    return router


def parse_infer_request(raw: bytes, header_length: str | None) -> InferRequest:
    """The JSON header (all of the body, or its first Inference-Header-Content-Length bytes) with binary inputs inlined."""
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} is not a number: {header_length!r}") from None
        if not 0 <= size <= len(raw):
            raise InvalidInput(f"{HEADER_LENGTH} {size} is beyond the {len(raw)}-byte body")
        raw, binary = raw[:size], raw[size:]
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"the inference request is not valid JSON: {exc}") from None
    try:
        request = InferRequest.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidInput(f"{where}: {first.get('msg')}") from None
    offset = 0
    for tensor in request.inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"input {tensor.name}: binary_data_size {size!r} does not fit the {len(binary) - offset} bytes left")
        tensor.data = decode_bytes_tensor(binary[offset : offset + size], tensor.name)
        offset += size
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    return request


def decode_bytes_tensor(blob: bytes, name: str) -> list[str]:
    """BYTES elements in the binary extension's layout: a 4-byte little-endian length, then that many bytes."""
    items, i = [], 0
    while i < len(blob):
        if i + 4 > len(blob):
            raise InvalidInput(f"input {name}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", blob, i)
        i += 4
        if i + length > len(blob):
            raise InvalidInput(f"input {name}: a BYTES element of {length} bytes overruns the tensor")
        try:
            items.append(blob[i : i + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input {name}: element {len(items)} is not UTF-8") from None
        i += length
    return items


def tensor_strings(request: InferRequest, settings: Settings, keeps_a_token: Any) -> tuple[list[str], list[str]]:
    """The two input tensors as equal-length lists of sentences, checked against /predict's limits."""
    by_name = {t.name: t for t in request.inputs}
    if sorted(by_name) != sorted(INPUTS):
        raise InvalidInput(f"inputs must be {' and '.join(INPUTS)}, got {', '.join(t.name for t in request.inputs)}")
    columns = []
    for name in INPUTS:
        tensor = by_name[name]
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input {name}: datatype must be BYTES, not {tensor.datatype}")
        if tensor.data is None:
            raise InvalidInput(f"input {name}: no data (JSON `data`, or binary_data_size with the binary extension)")
        data = _flatten(tensor.data)
        shape = tensor.shape
        if shape[0] != len(data) or (len(shape) == 2 and shape[1] != 1) or any(d < 0 for d in shape):
            raise InvalidInput(f"input {name}: shape {shape} does not hold its {len(data)} elements (use [N] or [N, 1])")
        for i, item in enumerate(data):
            if not isinstance(item, str):
                raise InvalidInput(f"input {name}[{i}]: BYTES elements must be strings, not {type(item).__name__}")
            if not 1 <= len(item) <= settings.max_sentence_chars:
                raise InvalidInput(f"input {name}[{i}]: {len(item)} characters; 1 to {settings.max_sentence_chars} allowed")
            if not keeps_a_token.search(item):
                raise InvalidInput(f"input {name}[{i}]: has no character the tokenizer keeps")
        columns.append(data)
    a, b = columns
    if len(a) != len(b):
        raise InvalidInput(f"text_a has {len(a)} elements and text_b {len(b)}: they must match")
    if not 1 <= len(a) <= settings.max_pairs_per_request:
        raise InvalidInput(f"{len(a)} pairs; 1 to {settings.max_pairs_per_request} allowed per request")
    return a, b


def requested_threshold(request: InferRequest) -> float:
    value = (request.parameters or {}).get("threshold", DECISION_THRESHOLD)
    if isinstance(value, bool) or not isinstance(value, int | float) or not MIN_THRESHOLD <= value <= MAX_THRESHOLD:
        raise InvalidInput(f"parameters.threshold must be a number from {MIN_THRESHOLD} to {MAX_THRESHOLD}, not {value!r}")
    return float(value)


def _flatten(data: list[Any]) -> list[Any]:
    return [x for item in data for x in (_flatten(item) if isinstance(item, list) else [item])]


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
