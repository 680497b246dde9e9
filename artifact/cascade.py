"""A cascade's file: which two models it chains (by the names their manifests give them), the band of the fast
model's scores that is sent to the accurate one, and how that band was chosen. The build writes it
(`python -m model_build cascade`), the service reads it (PARASERVE_MODELS: a folder holding cascade.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from artifact.errors import ArtifactError

CASCADE_FILE = "cascade.json"
CASCADE_FORMAT = 1


class CascadeBand(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    low: float
    high: float


class CascadeFile(BaseModel):
    """cascade.json."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    format_version: int
    name: str
    fast: str  # the fast model's manifest name (e.g. minilm-l6-mrpc)
    accurate: str  # the accurate model's manifest name (e.g. mpnet-base-mrpc)
    band: CascadeBand
    chosen: dict[str, Any]  # the goal, the cross-validated figures on MRPC train, the CPU and date of the choice


def is_cascade(folder: Path) -> bool:
    return (folder / CASCADE_FILE).is_file()


def read_cascade(folder: Path) -> CascadeFile:
    path = folder / CASCADE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format_version") != CASCADE_FORMAT:
        raise ArtifactError(f"{path} is not a cascade file of format {CASCADE_FORMAT}: rebuild it (python -m model_build cascade)")
    try:
        cascade = CascadeFile.model_validate_json(json.dumps(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ArtifactError(f"{path}: field {'.'.join(map(str, first['loc']))!r}: {first['msg']}") from None
    if not 0.0 <= cascade.band.low <= cascade.band.high <= 1.0:
        raise ArtifactError(f"{path}: the band [{cascade.band.low}, {cascade.band.high}) is not within [0, 1]")
    return cascade


def write_cascade(folder: Path, cascade: CascadeFile) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CASCADE_FILE
    path.write_text(json.dumps(cascade.model_dump(mode="json"), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
