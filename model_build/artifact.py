"""The artifact format: model.pt + tokenizer files + manifest.json, and how to check one before trusting it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from model_build.errors import BuildError

FORMAT_VERSION = 2  # 2: verified_shapes holds every (rows, columns) shape the build checked
MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
VARIANTS = ("fp32", "int8", "debug", "eager-int8", "int8-calibrated")
REQUIRED_KEYS = (
    "format_version",
    "name",
    "variant",
    "trace_shape",
    "input_names",
    "labels",
    "model_file",
    "model_sha256",
    "model_bytes",
    "tokenizer",
)


class ArtifactError(BuildError):
    """An artifact folder that is missing, malformed or does not match its manifest."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(artifact_dir: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json (sorted keys, so two builds diff cleanly)."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (artifact_dir / MANIFEST_FILE).write_text(text, encoding="utf-8")


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    """Read and shape-check manifest.json, without hashing the model."""
    if not artifact_dir.is_dir():
        raise ArtifactError(f"artifact folder {artifact_dir} does not exist")
    path = artifact_dir / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{artifact_dir} is not a paraserve artifact: no {MANIFEST_FILE}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format version {manifest['format_version']}; this paraserve reads {FORMAT_VERSION}")
    if manifest["variant"] not in VARIANTS:
        raise ArtifactError(f"{path} names unknown variant {manifest['variant']!r}")
    return manifest


def verify_artifact(artifact_dir: Path) -> dict[str, Any]:
    """Read the manifest and check model.pt's size and sha256 against it; return the manifest."""
    manifest = read_manifest(artifact_dir)
    model_path = artifact_dir / manifest["model_file"]
    if not model_path.is_file():
        raise ArtifactError(f"{model_path} is missing")
    size = model_path.stat().st_size
    if size != manifest["model_bytes"]:
        raise ArtifactError(f"{model_path} is {size} bytes but the manifest says {manifest['model_bytes']}: refusing a modified model")
    digest = sha256_file(model_path)
    if digest != manifest["model_sha256"]:
        raise ArtifactError(f"{model_path} has sha256 {digest} but the manifest says {manifest['model_sha256']}: refusing a modified model")
    tokenizer_path = artifact_dir / manifest["tokenizer"]["file"]
    if not tokenizer_path.is_file() or sha256_file(tokenizer_path) != manifest["tokenizer"]["sha256"]:
        raise ArtifactError(f"{tokenizer_path} is missing or does not match the manifest's sha256")
    return manifest
