"""The artifact format: a model file (model.pt, or model.xml + model.bin for OpenVINO) + tokenizer files +
manifest.json, the typed Manifest, and how to check one.

The build writes a Manifest, and every reader (runtime, inspect, evaluate, the service) reads the same frozen type:
a missing or mistyped field, or another format version, is one ArtifactError that says to rebuild.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from artifact.errors import ArtifactError

# 4: the engine an artifact needs (torchscript, openvino) and the digests of files beside the model file.
# 3: typed manifest; int8 widths (`int8`), the build host's CPU, the source checkpoint by name (no host paths);
#    int8-calibrated with 7-bit weights. 2: verified_shapes holds every (rows, columns) shape the build checked.
FORMAT_VERSION = 4
MODEL_FILE = "model.pt"
OPENVINO_MODEL_FILE, OPENVINO_WEIGHTS_FILE = "model.xml", "model.bin"
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"


class Variant(StrEnum):
    """The artifact kinds the build makes; the service can serve any of them."""

    FP32 = "fp32"
    INT8 = "int8"
    DEBUG = "debug"
    EAGER_INT8 = "eager-int8"
    INT8_CALIBRATED = "int8-calibrated"
    OPENVINO_INT8 = "openvino-int8"


@dataclass(frozen=True)
class FileDigest:
    """Size and sha256 of a file the model needs beside its model file (OpenVINO's weights)."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class TraceShape:
    batch_size: int
    seq_len: int


@dataclass(frozen=True)
class TokenizerInfo:
    file: str
    sha256: str
    truncation: str
    max_length: int


@dataclass(frozen=True)
class Source:
    """The checkpoint the artifact was built from: its folder's name (never a host path) and config hash."""

    checkpoint: str
    config_sha256: str
    random_init: bool = False  # True for `init-tiny` checkpoints: random weights, random answers


@dataclass(frozen=True)
class Int8Scheme:
    """Bit widths of an int8 variant's GEMM inputs; activation_bits None when scales are taken per batch at run time."""

    weight_bits: int
    activation_bits: int | None


@dataclass(frozen=True)
class BatchInvariance:
    batch_invariant: bool
    max_abs_logit_diff: float
    tolerance: float
    shapes: int


@dataclass(frozen=True)
class ActivationRange:
    """The calibrated input range of one Linear and the quint8 scale and zero point it maps to."""

    layer: str
    min: float
    max: float
    scale: float
    zero_point: int


@dataclass(frozen=True)
class Manifest:
    """What manifest.json says of an artifact; `parity`, `shape_parity`, `qconfig`, `op_counts` are reports for people."""

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
    engine: str  # artifact.engines: torchscript or openvino
    extra_files: Mapping[str, FileDigest]
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
    build_cpu: Mapping[str, str] = field(default_factory=dict)
    qconfig: Mapping[str, Any] | None = None
    parity: Mapping[str, Any] = field(default_factory=dict)
    shape_parity: Mapping[str, Any] = field(default_factory=dict)
    op_counts: Mapping[str, int] = field(default_factory=dict)

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
        out = asdict(self)
        out["variant"] = str(self.variant)
        out["verified_shapes"] = [list(s) for s in self.verified_shapes]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "manifest") -> Manifest:
        """Parse and type-check a manifest.json object; ArtifactError naming the first problem."""
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{where} has format version {version}; this paraserve reads {FORMAT_VERSION}: rebuild the artifact "
                "(python -m model_build build, or delete model-cache/ and run scripts/serve.sh)"
            )
        try:
            return cls(
                format_version=_get(data, "format_version", int),
                name=_get(data, "name", str),
                variant=Variant(_get(data, "variant", str)),
                trace_shape=TraceShape(**_get(data, "trace_shape", dict)),
                verified_shapes=tuple((int(r), int(c)) for r, c in _get(data, "verified_shapes", list)),
                input_names=tuple(_get(data, "input_names", list)),
                labels=tuple(_get(data, "labels", list)),
                model_file=_get(data, "model_file", str),
                model_sha256=_get(data, "model_sha256", str),
                model_bytes=_get(data, "model_bytes", int),
                engine=_get(data, "engine", str),
                extra_files={name: FileDigest(**d) for name, d in _get(data, "extra_files", dict).items()},
                tokenizer=TokenizerInfo(**_get(data, "tokenizer", dict)),
                source=Source(**_get(data, "source", dict)),
                int8=_optional(data, "int8", Int8Scheme),
                batch_invariance=_optional(data, "batch_invariance", BatchInvariance),
                activation_ranges=tuple(ActivationRange(**r) for r in _get(data, "activation_ranges", list)),
                linear_layers=tuple(_get(data, "linear_layers", list)),
                attn_implementation=_get(data, "attn_implementation", str),
                torch_version=_get(data, "torch_version", str),
                transformers_version=_get(data, "transformers_version", str),
                built_at=_get(data, "built_at", str),
                build_seconds=float(_get(data, "build_seconds", (int, float))),
                build_cpu=dict(_get(data, "build_cpu", dict)),
                qconfig=data.get("qconfig"),
                parity=dict(_get(data, "parity", dict)),
                shape_parity=dict(_get(data, "shape_parity", dict)),
                op_counts=dict(_get(data, "op_counts", dict)),
            )
        except ArtifactError:
            raise
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{where} is malformed ({exc}): rebuild the artifact") from exc


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise ArtifactError(f"manifest lacks {key!r}: rebuild the artifact")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ArtifactError(
            f"manifest field {key!r} is {type(value).__name__}, not {getattr(kind, '__name__', kind)}: rebuild the artifact"
        )
    return value


def _optional(data: Mapping[str, Any], key: str, kind: type) -> Any:
    """A field that must be present and may be null (fp32 has no int8 widths)."""
    if key not in data:
        raise ArtifactError(f"manifest lacks {key!r}: rebuild the artifact")
    value = data[key]
    return None if not value else kind(**value)


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


def verify_artifact(artifact_dir: Path) -> Manifest:
    """Read the manifest and check every model file's and the tokenizer's size and sha256 against it; return the manifest."""
    manifest = read_manifest(artifact_dir)
    model_path = artifact_dir / manifest.model_file
    try:
        if not model_path.is_file():
            raise ArtifactError(f"{model_path} is missing")
        size = model_path.stat().st_size
        if size != manifest.model_bytes:
            raise ArtifactError(f"{model_path} is {size} bytes but the manifest says {manifest.model_bytes}: refusing a modified model")
        digest = sha256_file(model_path)
        if digest != manifest.model_sha256:
            raise ArtifactError(
                f"{model_path} has sha256 {digest} but the manifest says {manifest.model_sha256}: refusing a modified model"
            )
        for name, expected in manifest.extra_files.items():
            path = artifact_dir / name
            if not path.is_file() or file_digest(path) != expected:
                raise ArtifactError(f"{path} is missing or does not match the manifest's size and sha256: refusing a modified model")
        tokenizer_path = artifact_dir / manifest.tokenizer.file
        if not tokenizer_path.is_file() or sha256_file(tokenizer_path) != manifest.tokenizer.sha256:
            raise ArtifactError(f"{tokenizer_path} is missing or does not match the manifest's sha256")
    except OSError as exc:  # unreadable file (permissions, I/O error): one line, not a traceback
        raise ArtifactError(f"cannot read the artifact in {artifact_dir}: {exc.strerror or exc} ({exc.filename})") from exc
    return manifest


def file_digest(path: Path) -> FileDigest:
    return FileDigest(bytes=path.stat().st_size, sha256=sha256_file(path))


def variant_folders(root: Path, order: Sequence[Variant]) -> list[Path]:
    """The variant sub-folders of an artifacts root that exist, in `order`."""
    return [root / v for v in order if (root / v / MANIFEST_FILE).is_file()]
