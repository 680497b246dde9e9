"""paraserve's own request, response and error bodies. Request limits come from the settings, so the schema states
them; the core (app.core.validation.validate_pairs) enforces them, the same for every protocol."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.validation import MAX_THRESHOLD, MIN_THRESHOLD
from artifact.encoding import DECISION_THRESHOLD, visible_pattern

Label = Literal["not_paraphrase", "paraphrase"]

EXAMPLE_PAIR = {
    "sentence1": "He said the foodservice pie business doesn't fit the company's long-term growth strategy.",
    "sentence2": "The foodservice pie business does not fit our long-term growth strategy.",
}


class SentencePair(BaseModel):
    """Two sentences to compare; unknown fields are rejected so a typo ('sentence_1') is not silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)
    sentence1: str = Field(
        description="First sentence: 1 to max_sentence_chars characters, at least one of which the tokenizer keeps "
        "(not only whitespace, control, zero-width or combining marks)."
    )
    sentence2: str = Field(description="Second sentence, same limits.")


class PredictRequest(BaseModel):
    """1..N sentence pairs, answered in order, by the model named (the server's default when none is)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"pairs": [EXAMPLE_PAIR]}]})
    pairs: list[SentencePair] = Field(description="1 to max_pairs_per_request pairs.")
    threshold: float = Field(
        DECISION_THRESHOLD,
        json_schema_extra={"minimum": MIN_THRESHOLD, "maximum": MAX_THRESHOLD},
        description=f"Decision threshold on P(paraphrase) for `label` ({MIN_THRESHOLD} to {MAX_THRESHOLD}; default "
        f"{DECISION_THRESHOLD}). Raise it for fewer false paraphrases, lower it for fewer missed ones; `score` is unchanged.",
    )
    return_logits: bool = Field(False, description="Also return the two raw logits of each pair.")
    model: str | None = Field(
        None, max_length=256, description="Which model answers (GET /models lists them); default: the first configured."
    )


def pin_limits(schema: dict[str, Any], max_pairs: int, max_chars: int, models: list[str]) -> dict[str, Any]:
    """The OpenAPI document with this deployment's limits and model names in /predict's schema, so clients and
    fuzzers see them (the core enforces them, the same for every protocol)."""
    components = schema.get("components", {}).get("schemas", {})
    pair = components.get("SentencePair", {}).get("properties", {})
    for name in ("sentence1", "sentence2"):
        if name in pair:
            pair[name].update(minLength=1, maxLength=max_chars, pattern=visible_pattern())
    request = components.get("PredictRequest", {}).get("properties", {})
    if "pairs" in request:
        request["pairs"].update(minItems=1, maxItems=max_pairs)
    if "model" in request:
        request["model"] = {
            "anyOf": [{"type": "string", "enum": models}, {"type": "null"}],
            "title": "Model",
            "description": request["model"].get("description", ""),
        }
    return schema


class ClassValues(BaseModel):
    """One value per class."""

    not_paraphrase: float
    paraphrase: float


class Prediction(BaseModel):
    """The answer for one pair."""

    label: Label = Field(description="paraphrase when score >= the request's threshold (default 0.5)")
    score: float = Field(ge=0.0, le=1.0, description="P(paraphrase) from the model's softmax")
    probabilities: ClassValues = Field(description="Softmax probability of each class (they sum to 1)")
    logits: ClassValues | None = Field(None, description="The model's raw logits, when return_logits is true")
    tokens: int = Field(description="Tokens the model read for this pair, [CLS] and [SEP]s included, after truncation")
    truncated: bool = Field(description="True when the pair was longer than the model's 128 tokens and was cut (longest_first)")
    decided_by: str = Field(description="The model whose score this is: the model named, or a cascade's fast or accurate stage")


class ModelRef(BaseModel):
    """Which artifact answered."""

    name: str
    variant: str
    sha256: str


class PredictResponse(BaseModel):
    """Predictions in request order."""

    predictions: list[Prediction]
    model: ModelRef


class ErrorResponse(BaseModel):
    """The one error shape of every non-2xx answer."""

    error: str = Field(description="What went wrong, for a person")
    error_type: str = Field(description="Stable machine-readable kind, e.g. validation, overloaded, payload_too_large")


class Status(BaseModel):
    """Health and readiness answers."""

    status: Literal["ok", "ready", "not_ready"]
    detail: str | None = None


class ModelSummary(BaseModel):
    """One model of GET /models."""

    name: str
    kind: Literal["model", "cascade"]
    version: str
    variant: str
    engine: str
    ready: bool
    default: bool
    stages: list[str] = Field(default_factory=list, description="A cascade's fast and accurate models")


class ModelList(BaseModel):
    """GET /models: every model this server answers with; the default answers calls that name none."""

    models: list[ModelSummary]


class CascadeInfo(BaseModel):
    """GET /model?model=<a cascade>: its stages, its band and how the band was chosen."""

    name: str
    kind: Literal["cascade"] = "cascade"
    fast: str
    accurate: str
    band: dict[str, float] = Field(description="Fast scores in [low, high) are scored again by the accurate model")
    source: dict[str, Any] = Field(description="The cascade file: how the band was chosen (on MRPC train, by cross-validation)")


class ModelInfo(BaseModel):
    """GET /model: one loaded artifact (the default, or ?model=name) and the effective settings."""

    name: str
    kind: Literal["model"] = "model"
    variant: str
    engine: str = Field(description="torchscript or openvino")
    selection: str = Field(description="Why this artifact serves here: as configured, a fallback, or the engine race of `auto`")
    sha256: str
    model_bytes: int
    trace_shape: dict[str, int]
    padding: str = Field(description="Effective padding: fixed (the trace shape) or buckets (what `auto` chose, if set)")
    workers: int = Field(description="Single-threaded model workers sharing the queue")
    random_init: bool = Field(description="True when the artifact was built from a random checkpoint (init-tiny): answers are random")
    cpu: dict[str, str] = Field(description="This host's CPU model, ATen vector ISA, int8 kernel path (vnni or avx2), quantized engine")
    manifest: dict[str, Any]
    settings: dict[str, Any]
