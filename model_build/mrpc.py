"""Read GLUE MRPC TSV files (BOM, bare quotes, a header row) into labelled pairs."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from model_build.errors import BuildError

HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]

MRPC_HELP = (
    "GLUE MRPC (the Microsoft Research Paraphrase Corpus) is expected as train.tsv and dev.tsv in the GLUE "
    "layout. It is distributed with the GLUE benchmark (gluebenchmark.com, or the 'glue' data set, 'mrpc' "
    "configuration, on the Hugging Face hub) under Microsoft's own licence, so paraserve does not ship it: "
    "download it once, then point at its folder with --data-dir (scripts/serve.sh: MRPC_DIR=/path/to/mrpc)."
)


@dataclass(frozen=True)
class Pair:
    """One MRPC example: label 1 means paraphrase."""

    sentence1: str
    sentence2: str
    label: int


def split_path(data_dir: Path, split: str) -> Path:
    """Return the TSV of a split, or raise a BuildError that explains what MRPC is."""
    if not data_dir.is_dir():
        raise BuildError(f"MRPC folder {data_dir} does not exist. {MRPC_HELP}")
    path = data_dir / f"{split}.tsv"
    if not path.is_file():
        raise BuildError(f"MRPC folder {data_dir} has no {split}.tsv. {MRPC_HELP}")
    return path


def read_tsv(path: Path) -> list[Pair]:
    """Parse one GLUE MRPC TSV file; a malformed line raises BuildError naming file and line."""
    pairs: list[Pair] = []
    # utf-8-sig drops the BOM; QUOTE_NONE because the strings hold bare '"' characters.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            line = reader.line_num
            if line == 1 and row and row[0] == HEADER[0]:
                continue
            if not row:
                continue
            if len(row) != len(HEADER):
                raise BuildError(f"{path}:{line}: expected {len(HEADER)} tab-separated columns, found {len(row)}")
            if row[0] not in ("0", "1"):
                raise BuildError(f"{path}:{line}: label must be 0 or 1, found {row[0]!r}")
            if not row[3].strip() or not row[4].strip():
                raise BuildError(f"{path}:{line}: empty sentence")
            pairs.append(Pair(row[3], row[4], int(row[0])))
    if not pairs:
        raise BuildError(f"{path}: no examples")
    return pairs


def load_split(data_dir: Path, split: str) -> list[Pair]:
    """Read one split (train or dev) of the MRPC folder."""
    return read_tsv(split_path(data_dir, split))
