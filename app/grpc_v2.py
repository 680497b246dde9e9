"""Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`), a third translator over the same core.

The same model, tensors and rules as REST v2 (app/oip.py) and /predict (app/core.py): this module only turns
protobuf messages into the core's call and its answer or domain error back into protobuf and a status code.
BYTES inputs come as `contents.bytes_contents` or as `raw_input_contents` (4-byte little-endian lengths, as
tritonclient sends them); outputs go as `raw_output_contents`, which Triton's and KServe's clients read.

What a gRPC user expects: messages over PARASERVE_MAX_BODY_BYTES are refused by gRPC itself (RESOURCE_EXHAUSTED);
at most 64 concurrent streams per connection and PARASERVE_MAX_CONNECTIONS RPCs at once; a client's deadline is
honoured — when it passes (or the client cancels) the call's rows leave the queue, as a closed HTTP connection's do;
domain errors map to codes: INVALID_ARGUMENT (bad input), NOT_FOUND (no such model), RESOURCE_EXHAUSTED (queue
full), UNAVAILABLE (not ready, draining), UNAUTHENTICATED (API key), CANCELLED, INTERNAL (a failed forward, a bug:
never for a client's mistake). `grpc.health.v1.Health` says SERVING while the service is ready. The request id is
taken from `x-request-id` metadata (or made), sent back as initial metadata, and names every log line; a W3C
`traceparent` in the metadata parents the call's span. Calls are counted in paraserve_grpc_requests_total{method,code}.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from app import errors, oip
from app.config import Settings
from app.core import Scored, require_api_key
from app.grpc_gen import open_inference_pb2 as pb
from app.grpc_gen import open_inference_pb2_grpc as pb_grpc
from app.logs import ExceptionLog
from app.observability import accepted_request_id, request_id
from app.service import PredictionService, State

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
MAX_CONCURRENT_STREAMS = 64

CODES: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.ValidationFailed: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidJSON: grpc.StatusCode.INVALID_ARGUMENT,
    errors.BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.TooManyConnections: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    errors.NotReady: grpc.StatusCode.UNAVAILABLE,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    errors.ClientClosed: grpc.StatusCode.CANCELLED,
    errors.RequestTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.InferenceFailed: grpc.StatusCode.INTERNAL,
}


def code_of(exc: errors.ServiceError) -> grpc.StatusCode:
    """The status code of a domain error (its nearest listed class)."""
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def message_of(exc: errors.ServiceError) -> str:
    """The error's text, a bad pair named by its tensor and element, as REST v2 names it."""
    if isinstance(exc, errors.InvalidPair):
        return f"input {oip.INPUTS[exc.position]}[{exc.index}]: {exc.problem}"
    return exc.message


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Each method parses, calls the core, renders; `_call` maps errors, counts, and sets the request id."""

    def __init__(self, service: PredictionService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self._key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self._log_exception = ExceptionLog(log)

    async def _call(self, method: str, request: Any, context: grpc.aio.ServicerContext, body: Handler, *, protected: bool = False) -> Any:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        rid = accepted_request_id(metadata.get("x-request-id", ""))
        token = request_id.set(rid)
        started, code = time.perf_counter(), grpc.StatusCode.OK
        metrics = self.service.metrics
        try:
            await context.send_initial_metadata((("x-request-id", rid),))
            carrier = {k: v for k, v in metadata.items() if k in ("traceparent", "tracestate")}
            with self.service.tracer.incoming_span(f"{SERVICE}/{method}", carrier, {"rpc.method": method, "paraserve.request_id": rid}):
                if protected:
                    self._require_key(metadata)
                return await body(request, context)
        except errors.ServiceError as exc:
            code = code_of(exc)
            remaining = context.time_remaining()
            if code is grpc.StatusCode.CANCELLED and remaining is not None and remaining < 0.01:
                code = grpc.StatusCode.DEADLINE_EXCEEDED  # "the client left" because its deadline passed
            metrics.errors.labels(error_type=code.name.lower()).inc()
            if code is not grpc.StatusCode.INTERNAL:
                log.debug("%s %s: %s", method, code.name, message_of(exc)[:200])
            await context.abort(code, message_of(exc))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the client left or its deadline passed: the core freed the rows
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code = grpc.StatusCode.INTERNAL
            self._log_exception(f"unhandled error in {method}", exc)
            await context.abort(code, "internal error")
        finally:
            metrics.grpc_requests.labels(method=method, code=code.name).inc()
            metrics.grpc_duration.labels(method=method).observe(time.perf_counter() - started)
            request_id.reset(token)

    def _require_key(self, metadata: dict[str, str]) -> None:
        require_api_key(self._key, metadata.get("authorization", ""), "authorization: Bearer <key> metadata")

    # ---- the protocol's methods ----------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        async def body(_request: Any, _context: Any) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._call("ServerLive", request, context, body)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        async def body(_request: Any, _context: Any) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.service.is_ready)

        return await self._call("ServerReady", request, context, body)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        async def body(r: pb.ModelReadyRequest, _context: Any) -> pb.ModelReadyResponse:
            if not self.service.is_ready:
                return pb.ModelReadyResponse(ready=False)
            try:  # a model this server does not have is not ready: OK with ready=false, as Triton answers
                oip.check_model(self.service, r.name, r.version or None)
            except errors.ModelNotFound:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._call("ModelReady", request, context, body)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        async def body(_request: Any, _context: Any) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name=oip.SERVER_NAME, version=oip.SERVER_VERSION, extensions=[])

        return await self._call("ServerMetadata", request, context, body)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        async def body(r: pb.ModelMetadataRequest, _context: Any) -> pb.ModelMetadataResponse:
            oip.check_model(self.service, r.name, r.version or None)
            model = self.service.model
            meta = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=model.name,
                versions=[model.version],
                platform=oip.platform(self.service),
                inputs=[meta(name=t.name, datatype=t.datatype, shape=t.shape) for t in oip.input_metadata()],
                outputs=[meta(name=t.name, datatype=t.datatype, shape=t.shape) for t in oip.output_metadata()],
            )

        return await self._call("ModelMetadata", request, context, body, protected=True)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        async def body(r: pb.ModelInferRequest, ctx: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
            scored, wanted = await oip.infer(
                self.service,
                r.model_name,
                r.model_version or None,
                input_tensors(r),
                [o.name for o in r.outputs],
                parameter(r.parameters["threshold"]) if "threshold" in r.parameters else None,
                client=peer_address(ctx.peer() or ""),
                gone=deadline_of(ctx),
            )
            return infer_response(scored, wanted, r.id)

        return await self._call("ModelInfer", request, context, body, protected=True)


def input_tensors(request: pb.ModelInferRequest) -> list[oip.InputTensor]:
    """The request's inputs with their elements as text: from raw_input_contents (all inputs) or each's contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise errors.InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    tensors = []
    for i, tensor in enumerate(request.inputs):
        if raw:
            data: list[Any] | None = oip.decode_bytes_tensor(raw[i], tensor.name) if tensor.datatype == "BYTES" else [None]
        elif tensor.contents.bytes_contents:
            data = [oip.decode_text(b, tensor.name, j) for j, b in enumerate(tensor.contents.bytes_contents)]
        else:
            data = None
        tensors.append(oip.InputTensor(tensor.name, tensor.datatype, list(tensor.shape), data))
    return tensors


def peer_address(peer: str) -> str:
    """The client's address without its port, for fair admission: 'ipv4:10.0.0.7:51234' -> '10.0.0.7'."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer


def parameter(value: pb.InferParameter) -> Any:
    """The Python value of an InferParameter (whichever of its fields is set)."""
    which = value.WhichOneof("parameter_choice")
    return getattr(value, which) if which else None


def infer_response(scored: Scored, wanted: list[str], request_id_: str) -> pb.ModelInferResponse:
    """Outputs as the REST side gives them (names, datatypes, shapes, values), their data as raw little-endian bytes."""
    values = oip.output_values(scored)
    response = pb.ModelInferResponse(model_name=scored.model.name, model_version=scored.model.version, id=request_id_)
    for name in wanted:
        shape, data = values[name]
        datatype = oip.OUTPUTS[name]
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw_bytes(datatype, data))
    return response


def raw_bytes(datatype: str, data: list[Any]) -> bytes:
    if datatype == "BYTES":
        return oip.encode_bytes_tensor(data)
    dtype = {"FP32": "<f4", "INT32": "<i4", "BOOL": "?"}[datatype]
    return np.asarray(data, dtype=dtype).tobytes()


def deadline_of(context: grpc.aio.ServicerContext) -> Callable[[], Awaitable[None]] | None:
    """The core's `gone`: completes when the client's deadline passes (a cancelled call is cancelled outright)."""
    remaining = context.time_remaining()
    if remaining is None:
        return None

    async def wait() -> None:
        await asyncio.sleep(max(0.0, remaining))

    return wait


class Health:
    """grpc.health.v1: SERVING for "" and the inference service while the service is ready, NOT_SERVING otherwise."""

    def __init__(self, service: PredictionService) -> None:
        self.servicer = health.aio.HealthServicer()
        self._service = service

    async def update(self, state: State) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if state is State.READY else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await self.servicer.set(name, status)


async def start_grpc_server(service: PredictionService, settings: Settings) -> tuple[grpc.aio.Server, Health]:
    """The gRPC server on PARASERVE_GRPC_PORT, in this process and event loop, over `service`."""
    assert settings.grpc_port is not None
    options = [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", 4 * settings.max_body_bytes),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.so_reuseport", 0),  # a busy port is an error, not a second listener
        ("grpc.max_connection_idle_ms", 5 * 60 * 1000),
    ]
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=settings.max_connections)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service, settings), server)
    checker = Health(service)
    health_pb2_grpc.add_HealthServicer_to_server(checker.servicer, server)
    address = f"{settings.host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise errors.NotReady(f"cannot listen for gRPC on {address}")
    await server.start()
    await checker.update(service.state)
    log.info("gRPC (Open Inference Protocol v2) on %s", address)
    return server, checker
