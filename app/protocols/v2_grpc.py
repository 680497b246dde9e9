"""Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`) and gRPC health, a translator over the core.

The same model, tensors and rules as REST v2 (app/protocols/oip.py) and /predict: this module turns protobuf bytes
into the core's call and its answer or domain error back into protobuf and a status code (the one error table,
app/shared/errors.py). BYTES inputs come as `contents.bytes_contents` or as `raw_input_contents` (4-byte
little-endian lengths, as tritonclient sends them); outputs go as `raw_output_contents`.

Each method is registered here, not by the generated servicer, so that every call passes the same edge before any
work (the connection-level edge is app/transport/grpc_front.py):
- its request message must arrive within `body_timeout_s` of the call's HEADERS, else the stream is reset with
  DEADLINE_EXCEEDED (request_timeout): 16 connections x 64 streams that sent HEADERS only once held every RPC slot;
- calls in flight (request received, answer not yet sent) are capped at `max_connections` in total and
  `max_connections_per_client` per client (RESOURCE_EXHAUSTED: too_many_rpcs, client_rpcs); Health `Watch` streams at
  `grpc_max_watches` in total and 4 per connection (too_many_watches, connection_watches). Streams still waiting
  for their request hold no such slot, only one of their connection's 64;
- the message is parsed here: malformed protobuf is INVALID_ARGUMENT with one debug line (gRPC's own deserializer
  answered UNKNOWN and logged a traceback per call), and what scales with a message is bounded before the work
  (outputs named at most once each, element counts checked against the pair limit before any decoding).
Every refusal is counted in paraserve_grpc_refused_total{reason}; every call in paraserve_grpc_requests_total.
The client is who the `PARASERVE_CLIENT_ID_HEADER` metadata names (as HTTP's header), else the connection's peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2

from app.core.service import PredictionService, State
from app.core.validation import Scored, client_identity, require_api_key
from app.protocols import oip, wire
from app.protocols.grpc_gen import open_inference_pb2 as pb
from app.shared import errors
from app.shared.config import Settings
from app.shared.logs import ExceptionLog
from app.shared.observability import accepted_request_id, request_id

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
HEALTH = "grpc.health.v1.Health"
MAX_CONCURRENT_STREAMS = 64
WATCHES_PER_CONNECTION = 4


class _Refused(errors.Overloaded):
    """A call refused at the edge, with the reason it is counted under."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Slots:
    """Calls (or watches) held now, in total and per key; `hold` refuses beyond either limit."""

    def __init__(self, total: int, per_key: int, reasons: tuple[str, str], what: str) -> None:
        self.total, self.per_key, self.reasons, self.what = total, per_key, reasons, what
        self.held = 0
        self.by_key: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        if self.held >= self.total:
            raise _Refused(f"too many {self.what} at once; retry shortly", self.reasons[0])
        if self.by_key.get(key, 0) >= self.per_key:
            raise _Refused(f"too many {self.what} at once from you; retry shortly", self.reasons[1])
        self.held += 1
        self.by_key[key] = self.by_key.get(key, 0) + 1
        try:
            yield
        finally:
            self.held -= 1
            left = self.by_key[key] - 1
            if left:
                self.by_key[key] = left
            else:
                del self.by_key[key]


Body = Callable[[Any, grpc.aio.ServicerContext, str], Awaitable[Message]]


class GrpcV2:
    """The gRPC methods over one service; `peer_of` names the client behind a connection (the front's relay)."""

    def __init__(self, service: PredictionService, settings: Settings, peer_of: Callable[[str], str]) -> None:
        self.service = service
        self.settings = settings
        self.peer_of = peer_of
        self.metrics = service.metrics
        self._key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self._client_key = settings.client_id_header.lower() if settings.client_id_header else None
        self._calls = _Slots(settings.max_connections, settings.max_connections_per_client, ("too_many_rpcs", "client_rpcs"), "gRPC calls")
        self._watches = _Slots(settings.grpc_max_watches, WATCHES_PER_CONNECTION, ("too_many_watches", "connection_watches"), "watches")
        self._log_exception = ExceptionLog(log)
        self._max_fields = max_fields(service.limits.max_pairs)
        self.health = HealthStatus()

    # ---- the edge every call passes ---------------------------------------------------------------------------

    async def _first_message(self, requests: AsyncIterator[bytes]) -> bytes:
        try:
            return await asyncio.wait_for(anext(requests), self.settings.body_timeout_s)
        except TimeoutError:
            self.metrics.grpc_refused.labels(reason="request_timeout").inc()
            raise errors.RequestTimeout(f"the request message did not arrive within {self.settings.body_timeout_s:g} s") from None
        except StopAsyncIteration:
            raise errors.InvalidInput("the call ended without a request message") from None

    def _client(self, metadata: dict[str, str], context: grpc.aio.ServicerContext) -> str:
        named = metadata.get(self._client_key, "") if self._client_key else ""
        return client_identity(named, self.peer_of(context.peer() or ""))

    def unary(self, method: str, request_type: type[Message], body: Body, *, protected: bool) -> grpc.RpcMethodHandler:
        """A unary method as gRPC sees a client-streaming one, so the edge runs from the call's first frame."""

        async def behavior(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            rid = accepted_request_id(metadata.get("x-request-id", ""))
            token = request_id.set(rid)
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                await context.send_initial_metadata((("x-request-id", rid),))
                raw = await self._first_message(requests)
                client = self._client(metadata, context)
                with self._calls.hold(client):
                    request = _parse(request_type, raw, self._max_fields)
                    carrier = {k: v for k, v in metadata.items() if k in ("traceparent", "tracestate")}
                    attributes = {"rpc.method": method, "paraserve.request_id": rid}
                    with self.service.tracer.incoming_span(f"{SERVICE}/{method}", carrier, attributes):
                        if protected:
                            require_api_key(self._key, metadata.get("authorization", ""), "authorization: Bearer <key> metadata")
                        return (await body(request, context, client)).SerializeToString()
            except errors.ServiceError as exc:
                code = await self._abort(method, exc, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the client left or its deadline passed: the core freed the rows
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                code = grpc.StatusCode.INTERNAL
                self._log_exception(f"unhandled error in {method}", exc)
                self.metrics.errors.labels(error_type=errors.INTERNAL.error_type).inc()
                await context.abort(code, "internal error")
            finally:
                self.metrics.grpc_requests.labels(method=method, code=code.name).inc()
                self.metrics.grpc_duration.labels(method=method).observe(time.perf_counter() - started)
                request_id.reset(token)
            raise AssertionError("unreachable")  # every path above returns or raises

        return grpc.stream_unary_rpc_method_handler(behavior)

    async def _abort(self, method: str, exc: errors.ServiceError, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
        kind = errors.kind_of(exc)
        code = grpc.StatusCode[kind.grpc]
        remaining = context.time_remaining()
        if code is grpc.StatusCode.CANCELLED and remaining is not None and remaining < 0.01:
            code = grpc.StatusCode.DEADLINE_EXCEEDED  # "the client left" because its deadline passed
        if isinstance(exc, _Refused):
            self.metrics.grpc_refused.labels(reason=exc.reason).inc()
        self.metrics.errors.labels(error_type=kind.error_type).inc()
        message = oip.DIALECT.message(exc)
        log.debug("%s %s: %s", method, code.name, message[:200])
        await context.abort(code, message)
        return code  # not reached: abort raises

    # ---- the protocol's methods ---------------------------------------------------------------------------

    async def server_live(self, _r: pb.ServerLiveRequest, _c: Any, _client: str) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, _r: pb.ServerReadyRequest, _c: Any, _client: str) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.is_ready)

    async def model_ready(self, r: pb.ModelReadyRequest, _c: Any, _client: str) -> pb.ModelReadyResponse:
        if not self.service.is_ready:
            return pb.ModelReadyResponse(ready=False)
        try:  # a model this server does not have is not ready: OK with ready=false, as Triton answers
            oip.check_model(self.service, r.name, r.version or None)
        except errors.ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, _r: pb.ServerMetadataRequest, _c: Any, _client: str) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=oip.SERVER_NAME, version=oip.SERVER_VERSION, extensions=[])

    async def model_metadata(self, r: pb.ModelMetadataRequest, _c: Any, _client: str) -> pb.ModelMetadataResponse:
        meta = oip.model_metadata(self.service, r.name, r.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
        )

    async def model_infer(self, r: pb.ModelInferRequest, context: grpc.aio.ServicerContext, client: str) -> pb.ModelInferResponse:
        oip.check_outputs(len(r.outputs))  # before a list of them is built
        scored, wanted = await oip.infer(
            self.service,
            r.model_name,
            r.model_version or None,
            input_tensors(r, self.service.limits.max_pairs),
            [o.name for o in r.outputs],
            parameter(r.parameters["threshold"]) if "threshold" in r.parameters else None,
            client=client,
            gone=deadline_of(context),
        )
        return infer_response(scored, wanted, r.id)

    # ---- grpc.health.v1 -------------------------------------------------------------------------------------

    async def health_check(self, r: health_pb2.HealthCheckRequest, _c: Any, _client: str) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=self.health.status_of(r.service))

    def watch(self) -> grpc.RpcMethodHandler:
        """Health Watch: the status now and at every change, until the server drains (then NOT_SERVING and the end)."""

        async def behavior(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                request = _parse(health_pb2.HealthCheckRequest, await self._first_message(requests), self._max_fields)
                with self._watches.hold(context.peer() or ""):
                    async for status in self.health.statuses(request.service):
                        yield health_pb2.HealthCheckResponse(status=status).SerializeToString()
            except errors.ServiceError as exc:
                code = await self._abort("Watch", exc, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                self.metrics.grpc_requests.labels(method="Watch", code=code.name).inc()
                self.metrics.grpc_duration.labels(method="Watch").observe(time.perf_counter() - started)

        return grpc.stream_stream_rpc_method_handler(behavior)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        methods = {
            "ServerLive": self.unary("ServerLive", pb.ServerLiveRequest, self.server_live, protected=False),
            "ServerReady": self.unary("ServerReady", pb.ServerReadyRequest, self.server_ready, protected=False),
            "ModelReady": self.unary("ModelReady", pb.ModelReadyRequest, self.model_ready, protected=True),
            "ServerMetadata": self.unary("ServerMetadata", pb.ServerMetadataRequest, self.server_metadata, protected=False),
            "ModelMetadata": self.unary("ModelMetadata", pb.ModelMetadataRequest, self.model_metadata, protected=True),
            "ModelInfer": self.unary("ModelInfer", pb.ModelInferRequest, self.model_infer, protected=True),
        }
        health = {"Check": self.unary("Check", health_pb2.HealthCheckRequest, self.health_check, protected=False), "Watch": self.watch()}
        return [grpc.method_handlers_generic_handler(SERVICE, methods), grpc.method_handlers_generic_handler(HEALTH, health)]


class HealthStatus:
    """grpc.health.v1 statuses: SERVING for "" and the inference service while the service is ready."""

    def __init__(self) -> None:
        self.serving = False
        self.final = False  # draining or stopped: watches end after saying NOT_SERVING
        self._changed = asyncio.Event()

    def update(self, state: State) -> None:
        self.serving = state is State.READY
        self.final = state in (State.DRAINING, State.STOPPED, State.DEAD)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def status_of(self, service: str) -> int:
        if service not in ("", SERVICE):
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        return health_pb2.HealthCheckResponse.SERVING if self.serving else health_pb2.HealthCheckResponse.NOT_SERVING

    async def statuses(self, service: str) -> AsyncIterator[int]:
        last = None
        while True:
            changed = self._changed
            status = self.status_of(service)
            if status != last:
                last = status
                yield status
            if self.final:
                return
            await changed.wait()


# Field counts are checked on the wire before parsing (app/protocols/wire.py): a message may hold, nested fields
# included, 4 per pair the deployment admits plus 256 (a 64-pair ModelInferRequest holds about 150).
LAYOUTS: dict[type[Message], wire.Layout] = {pb.ModelInferRequest: wire.INFER_REQUEST}


def max_fields(max_pairs: int) -> int:
    return 4 * max_pairs + 256


def _parse(request_type: type[Message], raw: bytes, limit: int) -> Any:
    try:
        fields = wire.count_fields(raw, LAYOUTS.get(request_type, {}), limit)
    except wire.Malformed as exc:
        raise errors.InvalidInput(f"the request is not a valid {request_type.DESCRIPTOR.full_name} message: {exc}") from None
    if fields > limit:
        raise errors.InvalidInput(f"the request holds more than {limit} protobuf fields (nested ones included): 4 per pair and 256 more")
    try:
        return request_type.FromString(raw)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise errors.InvalidInput(f"the request is not a valid {request_type.DESCRIPTOR.full_name} message: {str(exc)[:100]}") from None


def input_tensors(request: pb.ModelInferRequest, max_pairs: int) -> list[oip.InputTensor]:
    """The request's inputs with their elements as text: from raw_input_contents (all inputs) or each's contents.
    Element counts are checked against the pair limit before anything is decoded."""
    raw = request.raw_input_contents
    if len(raw) and len(raw) != len(request.inputs):
        raise errors.InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    tensors = []
    for i, tensor in enumerate(request.inputs):
        oip.check_shape(tensor.name, list(tensor.shape), max_pairs)
        if len(raw):
            data: list[Any] | None = oip.decode_bytes_tensor(raw[i], tensor.name, max_pairs) if tensor.datatype == "BYTES" else [None]
        elif len(tensor.contents.bytes_contents):
            contents = tensor.contents.bytes_contents
            oip.check_count(tensor.name, len(contents), max_pairs)
            data = [oip.decode_text(b, tensor.name, j) for j, b in enumerate(contents)]
        else:
            data = None
        tensors.append(oip.InputTensor(tensor.name, tensor.datatype, list(tensor.shape), data))
    return tensors


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


class _ClientLeftFilter(logging.Filter):
    """grpc's aio server logs ExecuteBatchError with a traceback when it sends an answer to a client that has left
    (15 in 25 s from one client that cancelled its calls); that is the client's choice, not a server error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ExecuteBatchError" not in record.getMessage() and "ExecuteBatchError" not in str(record.exc_info and record.exc_info[1])


_CLIENT_LEFT = _ClientLeftFilter()


async def start_grpc_server(
    service: PredictionService, settings: Settings, peer_of: Callable[[str], str]
) -> tuple[grpc.aio.Server, GrpcV2, int]:
    """gRPC's server on a loopback port of its own (the front relays the public port to it), in this event loop."""
    for name in ("grpc._cython.cygrpc", "grpc.aio._server", "grpc._server"):
        logging.getLogger(name).addFilter(_CLIENT_LEFT)
    options = [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", 4 * settings.max_body_bytes),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.max_metadata_size", settings.max_header_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.max_connection_idle_ms", 5 * 60 * 1000),
        # Only the front connects; this is a backstop should anything else on this host find the loopback port.
        ("grpc.max_allowed_incoming_connections", settings.grpc_max_connections + 16),
    ]
    server = grpc.aio.server(options=options)
    v2 = GrpcV2(service, settings, peer_of)
    server.add_generic_rpc_handlers(v2.handlers())
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        raise errors.NotReady("cannot listen for gRPC on a loopback port")
    await server.start()
    v2.health.update(service.state)
    return server, v2, port
