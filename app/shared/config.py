"""Service settings: every knob an environment variable `PARASERVE_<NAME>`, with its trade-off described."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from artifact.kernels import available_cpus

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def parse_models(value: str) -> dict[str, Path]:
    """`name=folder,name=folder` as an ordered mapping; ValueError naming the first problem."""
    found: dict[str, Path] = {}
    for item in value.split(","):
        name, sep, folder = item.strip().partition("=")
        name, folder = name.strip(), folder.strip()
        if not sep or not folder or not _MODEL_NAME.fullmatch(name):
            raise ValueError(f"{item.strip()!r} is not name=folder (a name of letters, digits, '.', '_' or '-')")
        if name in found:
            raise ValueError(f"model {name!r} is named twice")
        found[name] = Path(folder)
    if not found:
        raise ValueError("no model named")
    return found


def parse_band(value: str) -> tuple[float, float]:
    """`low,high` with 0 <= low <= high <= 1."""
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"{value!r} is not low,high (two numbers)") from None
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"{value!r}: a band needs 0 <= low <= high <= 1")
    return low, high


class Settings(BaseSettings):
    """Read from the environment (prefix PARASERVE_) when built; nothing is read at import time."""

    model_config = SettingsConfigDict(env_prefix="PARASERVE_", extra="ignore")

    artifact_dir: Path = Field(
        Path("model-cache/default/artifacts"),
        description="An artifacts root (then the best variant this host runs: the faster int8 engine, then dynamic int8, then "
        "fp32) or one variant folder, built by `python -m model_build build`; a variant this host cannot run (8 x 8 bits on an "
        "AVX2-only CPU, OpenVINO not installed) falls back to the best sibling it can, with one warning line saying why.",
    )
    models: str | None = Field(
        None,
        description="Several models in one server, as `name=folder,name=folder` (each an artifacts root or variant folder, or "
        "a cascade's folder); the first is the default of calls that name none. Unset: artifact_dir alone, named by its manifest.",
    )
    cascade_band: str | None = Field(
        None,
        description="`low,high`: the fast scores a cascade sends to its accurate model, overriding the band its file records "
        "(chosen on MRPC train by cross-validation).",
    )
    engine: str = Field(
        "auto",
        description="Which engine serves from an artifacts root: auto times the int8 variants of the same kind on their "
        "engines (int8-calibrated on TorchScript, openvino-int8 on OpenVINO) at start-up and serves the faster; or the name "
        "of one engine (torchscript, openvino) to serve only its variants.",
    )
    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 only inside a container or behind a proxy.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port; bound before the model loads, so a busy one fails at once.")
    grpc_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Also serve the Open Inference Protocol v2 over gRPC on this port (same host, process and core); unset: off.",
    )
    max_batch_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="How long the worker waits, from the first queued pair, for a batch to fill while other requests "
        "are on their way in (being tokenized); with none, a partial batch starts at once. Longer fills batches at "
        "moderate load (the 8x128 forward costs the same full or not) but delays those batches by up to that much.",
    )
    model_affinity_ms: float = Field(
        300.0,
        ge=0,
        le=10_000,
        description="With several models: for how long a model waiting for a worker may be passed over for the model the "
        "other workers are running now, so the workers run one model at a time and switch together (two models' weights "
        "evict each other from the shared cache: a forward costs about 1.5x beside another model's; a cascade served 1.14-1.38x "
        "the pairs/s with 300 ms than with 0, the same as with 1000). 0: strict turns.",
    )
    queue_capacity: int = Field(
        256,
        ge=1,
        description="Pairs that may wait for the model. Beyond it requests get 429 at once; larger values absorb "
        "bursts but let queueing latency grow to capacity / 8 batch times.",
    )
    queue_reserve: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="Fraction of the queue kept for clients within their share (capacity / active clients): a client over "
        "its share is admitted only while this much stays free, so a few clients of big requests cannot keep the queue "
        "full for everyone else. 0 turns fair admission off (first come, first served).",
    )
    client_id_header: str | None = Field(
        None,
        description="Header naming the client for fair admission, set by a trusted proxy in front (e.g. x-real-ip); "
        "unset: the peer address. Behind a proxy every client shares the proxy's address unless this is set.",
    )
    max_pairs_per_request: int = Field(64, ge=1, le=4096, description="Pairs one request may carry (422 beyond).")
    max_sentence_chars: int = Field(
        2000, ge=1, description="Characters per sentence (422 beyond); the model reads at most 128 tokens per pair anyway."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Request body limit (413 before the body is parsed).")
    workers: int = Field(
        default_factory=lambda: available_cpus(),
        ge=1,
        le=256,
        description="Single-threaded model workers taking batches from the one queue (default: the CPUs this process may use, "
        "by affinity and cgroup quota). On 2 cores, 2 workers served 1.7-1.9x the pairs/s of one (docs/performance.md).",
    )
    torch_threads: int = Field(1, ge=1, description="Intra-op threads of each model worker; 1 is fastest on small batches.")
    padding: Literal["auto", "fixed", "buckets"] = Field(
        "auto",
        description="fixed: every batch is padded to the trace shape (8x128, the tutorial's way). buckets: rows to the "
        "real count and columns to the smallest verified bucket (16, 32, ... 128), with batches grouped by length; about "
        "2x the throughput. auto: buckets for artifacts the build showed batch-invariant (fp32, int8-calibrated: the "
        "same scores either way), fixed for dynamic int8, whose scores move with the batch's padding and companions.",
    )
    quantized_engine: Literal["x86", "onednn", "fbgemm", "qnnpack"] | None = Field(
        None, description="torch.backends.quantized.engine for int8 models (None: torch's default, x86; int8-calibrated needs x86)."
    )
    shutdown_grace_s: float = Field(30.0, ge=0, description="On SIGTERM, how long accepted requests may take to finish.")
    max_connections: int = Field(
        1000, ge=1, description="Open connections at once; beyond it a new one gets 503 and is closed (the fd limit is raised to fit)."
    )
    max_connections_per_client: int = Field(
        250,
        ge=1,
        description="Open connections from one peer address; beyond it its new ones get 503 and are closed, so one address "
        "cannot take every slot. Behind a proxy all clients share its address: raise this to max_connections there.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time for a connection's request headers to arrive complete (from connect, or the next request's first byte).",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Time for a request body to arrive complete, from the end of its headers (408 beyond)."
    )
    min_body_rate: float = Field(
        240.0,
        ge=0,
        description="Bytes per second a request body must average once body_rate_grace_s has passed (408 below; 0: off). "
        "Kestrel's default: a body dripped a byte at a time is cut after the grace period, not after body_timeout_s.",
    )
    body_rate_grace_s: float = Field(5.0, ge=0, description="Time a body may take before min_body_rate applies.")
    max_body_chunks: int = Field(
        1024,
        ge=1,
        description="Chunks a chunked request body may have (400 beyond). Each chunk costs the server a parse however few "
        "bytes it holds: 900,000 one-byte chunks stalled the event loop 5.7 s. 1 MiB in 1 KiB chunks fits.",
    )
    send_timeout_s: float = Field(30.0, gt=0, description="How long a client may leave its responses unread before it is disconnected.")
    keep_alive_s: float = Field(5.0, gt=0, description="Idle time after a response before a keep-alive connection is closed.")
    max_header_bytes: int = Field(16_384, ge=1024, description="Request line plus headers (431 beyond).")
    max_pipelined: int = Field(16, ge=1, description="Requests a client may pipeline behind one another before 503 and close.")
    grpc_max_connections: int = Field(
        256,
        ge=1,
        description="Open gRPC connections at once (clients multiplex their calls on a few); beyond it a new one gets GOAWAY "
        "and is closed. Each costs three descriptors (it is relayed to gRPC's server): the open-file limit must hold "
        "max_connections + 3 x this + 256, checked at start.",
    )
    grpc_max_connections_per_client: int = Field(
        64, ge=1, description="Open gRPC connections from one peer address; beyond it its new ones get GOAWAY and are closed."
    )
    grpc_max_watches: int = Field(
        64, ge=1, description="gRPC health Watch streams open at once (at most 4 per connection); beyond it RESOURCE_EXHAUSTED."
    )
    api_key: SecretStr | None = Field(
        None,
        description="If set, every route and method that names a model requires `Authorization: Bearer <key>` (gRPC: the "
        "`authorization` metadata): /predict, /models, /model, v2's model metadata, readiness and inference on REST and "
        "gRPC. Process health (/healthz, /readyz, /v2/health/*, gRPC health, ServerLive/ServerReady) stays open for probes. "
        "Empty is unset; the service warns at start when it listens on a non-loopback address without one.",
    )
    protect_metrics: bool = Field(False, description="With api_key set, also require it on /metrics (health stays open).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="A client's mistake is one line at debug.")
    json_logs: bool = Field(False, description="One JSON object per log line (for log shippers).")

    @field_validator("models")
    @classmethod
    def _model_list(cls, value: str | None) -> str | None:
        if value is not None:
            parse_models(value)
        return value

    @field_validator("cascade_band")
    @classmethod
    def _band(cls, value: str | None) -> str | None:
        if value is not None:
            parse_band(value)
        return value

    def model_folders(self) -> dict[str, Path] | None:
        """PARASERVE_MODELS by name, in order; None when unset (artifact_dir alone)."""
        return parse_models(self.models) if self.models else None

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        from artifact.engines import ENGINES

        if value != "auto" and value not in ENGINES:
            raise ValueError(f"must be auto or one of {', '.join(ENGINES)}")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_no_key(cls, value: Any) -> Any:
        # PARASERVE_API_KEY= (compose's default) means no key, said in a warning when the port is exposed.
        return None if value is None or (isinstance(value, str) and not value.strip()) else value

    def public(self) -> dict[str, Any]:
        """The settings as GET /model shows them: the key masked, the artifact by folder name (no host paths)."""
        shown = self.model_dump(mode="json", exclude={"artifact_dir"})
        shown["artifact"] = self.artifact_dir.name
        return shown
