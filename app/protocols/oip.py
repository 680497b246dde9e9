"""The models as the Open Inference Protocol sees them, whatever the wire (REST in app/protocols/v2_rest.py, gRPC in
app/protocols/v2_grpc.py): their names and versions, the tensors they take and answer, and how tensors become the
core's pairs. No FastAPI, no grpc.

Inputs: two BYTES tensors `text_a` and `text_b` of shape [N] (or [N, 1]). Outputs: `probabilities` (FP32 [N, 2]:
not_paraphrase, paraphrase), `label` (BYTES [N]), `score` (FP32 [N], P(paraphrase)), `tokens` (INT32 [N]),
`truncated` (BOOL [N]) and `decided_by` (BYTES [N]: the model whose score it is; a cascade's fast or accurate stage).
What a pair may hold (lengths, characters, count) is the core's rule, not the wire's.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.core.service import PredictionService
from app.core.validation import LABELS, ModelId, Scored, count_problem, shown
from app.shared.errors import Dialect, InvalidInput, InvalidPair, ModelNotFound, ValidationFailed

INPUTS = ("text_a", "text_b")
OUTPUTS = {"probabilities": "FP32", "label": "BYTES", "score": "FP32", "tokens": "INT32", "truncated": "BOOL", "decided_by": "BYTES"}
OUTPUT_SHAPES = {"probabilities": [-1, len(LABELS)]}  # the rest are [-1]
SERVER_NAME, SERVER_VERSION = "paraserve", "0.1.0"


def locate(exc: InvalidPair) -> str:
    """Where a bad pair is, in the protocol's terms: its tensor and element."""
    return f"input {INPUTS[exc.position]}[{exc.index}]"


# How both wires say an error: a bad pair by its tensor and element; on REST, 400 for every invalid request.
DIALECT = Dialect(locate, {"validation": 400})


@dataclass(frozen=True)
class InputTensor:
    """An input tensor as any wire gives it: `data` flat (row-major) or, for shape [N, 1], N one-element lists."""

    name: str
    datatype: str
    shape: Sequence[int]
    data: Sequence[Any] | None


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ModelMetadata:
    """What both wires answer for model metadata."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]


def check_model(service: PredictionService, name: str, version: str | None = None) -> None:
    """ModelNotFound unless the server serves `name` (and `version`, when given); NotReady while it cannot answer. The
    name is required here: the protocol addresses every call to a model."""
    if not name:
        service.require_ready()
        raise ModelNotFound("no model named; this protocol addresses every call to /v2/models/{name}")
    service.get(name, version)


def platform(model: ModelId) -> str:
    return f"{model.engine}_{model.variant}"


def model_metadata(service: PredictionService, name: str, version: str | None) -> ModelMetadata:
    check_model(service, name, version)
    model = service.get(name).id
    return ModelMetadata(
        name=model.name,
        versions=[model.version],
        platform=platform(model),
        inputs=[TensorMeta(n, "BYTES", [-1]) for n in INPUTS],
        outputs=[TensorMeta(n, t, OUTPUT_SHAPES.get(n, [-1])) for n, t in OUTPUTS.items()],
    )


def check_outputs(count: int) -> None:
    """At most one request per output: answering 100,000 `score`s cost 431 ms of the event loop for a 900 KB request."""
    if count > len(OUTPUTS):
        raise InvalidInput(f"{count} outputs requested; this model has {len(OUTPUTS)} ({', '.join(OUTPUTS)}), each at most once")


def wanted_outputs(names: Sequence[str]) -> list[str]:
    """The requested outputs (all when none is named), each at most once; InvalidInput for a name this model lacks."""
    check_outputs(len(names))
    wanted = list(names) or list(OUTPUTS)
    unknown = [n for n in wanted if n not in OUTPUTS]
    if unknown:
        raise InvalidInput(f"unknown output(s) {shown(unknown)}; this model has {', '.join(OUTPUTS)}")
    if len(set(wanted)) != len(wanted):
        raise InvalidInput(f"outputs {shown(wanted)} name one output more than once")
    return wanted


def check_count(name: str, count: int, max_pairs: int) -> None:
    """The pair limit, applied to a tensor's element count before its elements are decoded."""
    if count > max_pairs:
        raise ValidationFailed(f"input {shown(name)}: " + count_problem(count, max_pairs))


def check_shape(name: str, shape: Sequence[int], max_pairs: int) -> None:
    """A shape whose element count is over the pair limit is refused before its data is read."""
    count = 1
    for dim in shape[:2]:
        count *= max(dim, 0)
    check_count(name, count, max_pairs)


def columns(tensors: Sequence[InputTensor]) -> tuple[list[Any], list[Any]]:
    """The two input tensors as equal-length columns, row-major; what each element may hold is the core's rule."""
    by_name = {t.name: t for t in tensors}
    if len(tensors) != len(INPUTS) or sorted(by_name) != sorted(INPUTS):
        raise InvalidInput(f"inputs must be {' and '.join(INPUTS)}, got {shown([t.name for t in tensors])}")
    found = []
    for name in INPUTS:
        tensor = by_name[name]
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input {name}: datatype must be BYTES, not {shown(tensor.datatype)}")
        if tensor.data is None:
            raise InvalidInput(f"input {name}: no data")
        shape = list(tensor.shape)
        if not 1 <= len(shape) <= 2 or any(d < 0 for d in shape) or (len(shape) == 2 and shape[1] != 1):
            raise InvalidInput(f"input {name}: shape {shown(shape)} is not [N] or [N, 1]")
        data = _rows(tensor.data, name, nested=len(shape) == 2)
        if shape[0] != len(data):
            raise InvalidInput(f"input {name}: shape {shape} does not hold its {len(data)} elements")
        found.append(data)
    a, b = found
    if len(a) != len(b):
        raise InvalidInput(f"text_a has {len(a)} elements and text_b {len(b)}: they must match")
    return a, b


def _rows(data: Sequence[Any], name: str, *, nested: bool) -> list[Any]:
    """N elements; for shape [N, 1] also N lists of one element. Deeper nesting is refused, never recursed into."""
    if not nested:
        return list(data)
    rows = []
    for i, item in enumerate(data):
        if isinstance(item, list):
            if len(item) != 1:
                raise InvalidInput(f"input {name}[{i}]: a row of shape [N, 1] holds one element, not {len(item)}")
            item = item[0]
        rows.append(item)
    return rows


def decode_bytes_tensor(blob: bytes, name: str, max_items: int) -> list[str]:
    """BYTES elements in the binary layout both wires use: a 4-byte little-endian length, then that many bytes; more
    than `max_items` elements is refused as soon as the next one starts (250,000 empty ones took 113-150 ms)."""
    items: list[str] = []
    i = 0
    while i < len(blob):
        if len(items) >= max_items:
            check_count(name, len(items) + 1, max_items)
        if i + 4 > len(blob):
            raise InvalidInput(f"input {shown(name)}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", blob, i)
        i += 4
        if i + length > len(blob):
            raise InvalidInput(f"input {shown(name)}: a BYTES element of {length} bytes overruns the tensor")
        items.append(decode_text(blob[i : i + length], name, len(items)))
        i += length
    return items


def decode_text(raw: bytes, name: str, index: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input {shown(name)}: element {index} is not UTF-8") from None


def encode_bytes_tensor(items: Sequence[str]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in (s.encode("utf-8") for s in items))


def output_values(scored: Scored) -> dict[str, tuple[list[int], list[Any]]]:
    """Every output tensor of this model, by name: (shape, flat row-major data)."""
    results = scored.results
    n = len(results)
    return {
        "probabilities": ([n, len(LABELS)], [p for r in results for p in r.probabilities]),
        "label": ([n], [r.label for r in results]),
        "score": ([n], [r.score for r in results]),
        "tokens": ([n], [r.tokens for r in results]),
        "truncated": ([n], [r.truncated for r in results]),
        "decided_by": ([n], [r.decided_by for r in results]),
    }


async def infer(
    service: PredictionService,
    name: str,
    version: str | None,
    tensors: Sequence[InputTensor],
    outputs: Sequence[str],
    threshold: Any,
    *,
    client: str,
    gone: Callable[[], Awaitable[Any]] | None,
) -> tuple[Scored, list[str]]:
    """One inference through the core: the model named, the pairs the tensors hold, the outputs asked for."""
    check_model(service, name, version)
    wanted = wanted_outputs(outputs)
    a, b = columns(tensors)
    pairs = list(zip(a, b, strict=True))
    scored = await service.score(pairs, model=name, version=version, threshold=threshold, client=client, gone=gone)
    return scored, wanted
