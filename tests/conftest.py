"""Shared fixtures: a tiny random BERT checkpoint and its artifacts, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
PAIRS = [
    ("The company said quarterly profit rose 12 percent.", "Quarterly profit climbed 12 percent, the company said."),
    ("Shares fell 3 percent in early trading.", "The museum will reopen next spring."),
    ('He said "no comment" and left.', 'He left after saying "no comment".'),
    ("The bill passed the Senate 62 to 38.", "The Senate rejected the measure."),
]


def write_mrpc(folder: Path, rows: int = 20, splits: tuple[str, ...] = ("train", "dev")) -> Path:
    """A GLUE-layout MRPC folder (BOM, header, bare quotes) of `rows` pairs per split."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        lines = [MRPC_HEADER]
        for i in range(rows):
            a, b = PAIRS[i % len(PAIRS)]
            lines.append(f"{(i + 1) % 2}\t{1000 + i}\t{2000 + i}\t{a}\t{b}\n")
        (folder / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_build.tiny import init_tiny

    return init_tiny(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def mrpc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mrpc(tmp_path_factory.mktemp("mrpc"))


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_checkpoint: Path, mrpc_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every variant of the tiny checkpoint, int8-calibrated on `mrpc_dir` (read-only for tests)."""
    from model_build.build import BuildOptions, build

    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    build(tiny_checkpoint, out, BuildOptions(name="tiny", calibration_data=mrpc_dir))
    return out


@pytest.fixture(scope="session")
def tiny_mpnet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random MPNet in MPNet's pair template and padding id (built from its config: nothing downloaded)."""
    from model_build.tiny import init_tiny

    return init_tiny(tmp_path_factory.mktemp("ckpt-mpnet") / "tiny-mpnet", family="mpnet", seed=1)


@pytest.fixture(scope="session")
def tiny_mpnet_artifacts(tiny_mpnet_checkpoint: Path, mrpc_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32, the tutorial's int8, int8-calibrated and openvino-int8 of the tiny MPNet."""
    from model_build.build import BuildOptions, build

    out = tmp_path_factory.mktemp("artifacts-mpnet") / "tiny-mpnet"
    variants = ("fp32", "int8", "int8-calibrated", "openvino-int8")
    build(tiny_mpnet_checkpoint, out, BuildOptions(name="tiny-mpnet", calibration_data=mrpc_dir, variants=variants))
    return out
