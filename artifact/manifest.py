"""The artifact format: a model file (model.pt, or model.xml + model.bin for OpenVINO) + tokenizer files +
manifest.json, the typed Manifest, and how to check one.

The build writes a Manifest, and every reader (runtime, inspect, evaluate, the service) reads the same frozen type:
a missing or mistyped field, or another format version, is one ArtifactError that says to rebuild.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from artifact.errors import ArtifactError

# 5: the tokenizer's padding id; the model's input names may be fewer than BERT's three (MPNet takes no segment ids).
# 4: the engine an artifact needs (torchscript, openvino) and the digests of files beside the model file.
# 3: typed manifest; int8 widths (`int8`), the build host's CPU, the source checkpoint by name (no host paths);
#    int8-calibrated with 7-bit weights. 2: verified_shapes holds every (rows, columns) shape the build checked.
FORMAT_VERSION = 5
MODEL_FILE = "model.pt"
OPENVINO_MODEL_FILE, OPENVINO_WEIGHTS_FILE = "model.xml", "model.bin"
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
REBUILD = "rebuild the artifact (python -m model_build build, or delete model-cache/ and run scripts/serve.sh)"


class Variant(StrEnum):
    """The artifact kinds the build makes (one entry each in the build's recipe table); the service serves any."""

    FP32 = "fp32"
    INT8 = "int8"
    DEBUG = "debug"
    EAGER_INT8 = "eager-int8"
    INT8_CALIBRATED = "int8-calibrated"
    OPENVINO_INT8 = "openvino-int8"


class _Record(BaseModel):
    """A frozen part of the manifest: unknown fields are refused, types are checked (a bool is not an int)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class FileDigest(_Record):
    """Size and sha256 of a file the model needs beside its model file (OpenVINO's weights)."""

    bytes: int
    sha256: str


class TraceShape(_Record):
    batch_size: int
    seq_len: int


class TokenizerInfo(_Record):
    file: str
    sha256: str
    truncation: str
    max_length: int
    pad_id: int  # the id padding columns hold (masked out; BERT's [PAD] is 0, MPNet's <pad> 1)


class Source(_Record):
    """The checkpoint the artifact was built from: its folder's name (never a host path) and config hash."""

    checkpoint: str
    config_sha256: str
    random_init: bool = False  # True for `init-tiny` checkpoints: random weights, random answers
    family: str = "bert"  # config.json's model_type


class Int8Scheme(_Record):
    """Bit widths of an int8 variant's GEMM inputs; activation_bits None when scales are taken per batch at run time."""

    weight_bits: int
    activation_bits: int | None
    float_layers: tuple[str, ...] = ()  # Linears kept in floating point (the sensitive ones), if any


class BatchInvariance(_Record):
    batch_invariant: bool
    max_abs_logit_diff: float
    tolerance: float
    shapes: int


class ActivationRange(_Record):
    """The calibrated input range of one Linear and the quint8 scale and zero point it maps to."""

    layer: str
    min: float
    max: float
    scale: float
    zero_point: int


class Manifest(_Record):
    """What manifest.json says of an artifact; `parity`, `shape_parity`, `qconfig`, `op_counts` are reports for people.

    Every reader (runtime, inspect, evaluate, the service) reads this one type: a missing or mistyped field, or
    another format version, is one ArtifactError that says to rebuild.
    """

    format_version: int
    name: str
    variant: Variant
    trace_shape: TraceShape
    verified_shapes: tuple[tuple[int, int], ...]
    input_names: tuple[str, ...]
    labels: tuple[str, ...]
    model_file: str
    model_sha256: str
    model_bytes: int
    engine: str  # a key of artifact.engines.ENGINES
    extra_files: dict[str, FileDigest]
    tokenizer: TokenizerInfo
    source: Source
    int8: Int8Scheme | None
    batch_invariance: BatchInvariance | None
    activation_ranges: tuple[ActivationRange, ...]
    linear_layers: tuple[str, ...]
    attn_implementation: str
    torch_version: str
    transformers_version: str
    built_at: str
    build_seconds: float
    build_cpu: dict[str, str] = {}
    qconfig: dict[str, Any] | None = None
    parity: dict[str, Any] = {}
    shape_parity: dict[str, Any] = {}
    op_counts: dict[str, int] = {}

    @property
    def size_bytes(self) -> int:
        """The model on disk: its model file and the files beside it (OpenVINO's weights)."""
        return self.model_bytes + sum(d.bytes for d in self.extra_files.values())

    @property
    def is_batch_invariant(self) -> bool:
        """Whether the build showed a row's logits do not depend on its batch or padding."""
        return self.batch_invariance is not None and self.batch_invariance.batch_invariant

    def to_json(self) -> dict[str, Any]:
        """The JSON object manifest.json holds."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "manifest") -> Manifest:
        """Parse and type-check a manifest.json object; ArtifactError naming the first problem.

        Validated as JSON in strict mode: arrays for tuples, values for enums, and no coercion (a bool is not an int,
        "8" is not 8)."""
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{where} has format version {version}; this paraserve reads {FORMAT_VERSION}: {REBUILD}")
        try:
            return cls.model_validate_json(json.dumps(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ())) or "manifest"
            raise ArtifactError(f"{where}: field {field!r}: {first.get('msg')}: {REBUILD}") from None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(artifact_dir: Path, manifest: Manifest) -> None:
    """Write manifest.json (sorted keys, so two builds diff cleanly)."""
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"
    (artifact_dir / MANIFEST_FILE).write_text(text, encoding="utf-8")


def read_manifest(artifact_dir: Path) -> Manifest:
    """Read and type-check manifest.json, without hashing the model."""
    if not artifact_dir.is_dir():
        raise ArtifactError(f"artifact folder {artifact_dir} does not exist")
    path = artifact_dir / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{artifact_dir} is not a paraserve artifact: no {MANIFEST_FILE}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} is not a JSON object")
    return Manifest.from_json(data, str(path))


@dataclass(frozen=True)
class VerifiedArtifact:
    """A manifest and the bytes of its model file and the files beside it, as read once and checked against it."""

    manifest: Manifest
    contents: dict[str, bytes]


def read_artifact(artifact_dir: Path) -> VerifiedArtifact:
    """Read the manifest, read every model file into memory and check its size and sha256 against the manifest (and
    the tokenizer's): what is served is exactly the bytes checked, whatever happens to the files afterwards."""
    manifest = read_manifest(artifact_dir)
    expected = {manifest.model_file: FileDigest(bytes=manifest.model_bytes, sha256=manifest.model_sha256), **manifest.extra_files}
    contents: dict[str, bytes] = {}
    try:
        for name, digest in expected.items():
            path = artifact_dir / name
            if not path.is_file():
                raise ArtifactError(f"{path} is missing")
            data = path.read_bytes()
            if len(data) != digest.bytes:
                raise ArtifactError(f"{path} is {len(data)} bytes but the manifest says {digest.bytes}: refusing a modified model")
            got = hashlib.sha256(data).hexdigest()
            if got != digest.sha256:
                raise ArtifactError(f"{path} has sha256 {got} but the manifest says {digest.sha256}: refusing a modified model")
            contents[name] = data
        tokenizer_path = artifact_dir / manifest.tokenizer.file
        if not tokenizer_path.is_file() or sha256_file(tokenizer_path) != manifest.tokenizer.sha256:
            raise ArtifactError(f"{tokenizer_path} is missing or does not match the manifest's sha256")
    except OSError as exc:  # unreadable file (permissions, I/O error): one line, not a traceback
        raise ArtifactError(f"cannot read the artifact in {artifact_dir}: {exc.strerror or exc} ({exc.filename})") from exc
    return VerifiedArtifact(manifest, contents)


def verify_artifact(artifact_dir: Path) -> Manifest:
    """Read the manifest and check every model file's and the tokenizer's size and sha256 against it; return the manifest."""
    return read_artifact(artifact_dir).manifest


def file_digest(path: Path) -> FileDigest:
    return FileDigest(bytes=path.stat().st_size, sha256=sha256_file(path))


def variant_folders(root: Path, order: Sequence[Variant]) -> list[Path]:
    """The variant sub-folders of an artifacts root that exist, in `order`."""
    return [root / v for v in order if (root / v / MANIFEST_FILE).is_file()]
