"""Shape choice of the runtime: fixed 8x128, or the cheapest verified bucket."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from artifact.encoding import EncodedPair
from artifact.errors import ArtifactError
from artifact.kernels import int8_kernel_exact
from artifact.runtime import Runtime, configure_process
from model_build.parity_pairs import PARITY_PAIRS


def row(n: int) -> EncodedPair:
    return EncodedPair(tuple([101] + [2000] * (n - 2) + [102]), tuple([0] * n), (n - 3, 1))


def test_fixed_padding_always_uses_the_trace_shape(tiny_artifacts: Path):
    rt = Runtime.load(tiny_artifacts / "int8")
    assert rt.shape_for([row(5)]) == (8, 128)
    assert rt.forward([row(5)]).padded.input_ids.shape == (8, 128)


def test_buckets_use_the_cheapest_verified_shape(tiny_artifacts: Path):
    rt = Runtime.load(tiny_artifacts / "int8", padding="buckets")
    assert rt.columns == [16, 32, 48, 64, 80, 96, 112, 128]
    assert rt.shape_for([row(5)]) == (1, 16)
    assert rt.shape_for([row(5), row(33), row(7)]) == (3, 48)
    assert rt.shape_for([row(128)] * 8) == (8, 128)
    assert rt.columns_for(row(96)) == 96 and rt.columns_for(row(97)) == 112
    assert rt.forward([row(40), row(10)]).padded.input_ids.shape == (2, 48)


def test_buckets_only_use_shapes_the_manifest_verified(tiny_artifacts: Path):
    rt = Runtime.load(tiny_artifacts / "int8", padding="buckets")
    manifest = rt.manifest.model_copy(update={"verified_shapes": ((8, 64), (8, 128))})
    narrowed = Runtime(rt.artifact_dir, manifest, rt.engine, "buckets")
    assert narrowed.shape_for([row(5)]) == (8, 64)


def test_bucketed_fp32_scores_equal_fixed_padding(tiny_artifacts: Path):
    fixed = Runtime.load(tiny_artifacts / "fp32", padding="fixed")
    bucketed = Runtime.load(tiny_artifacts / "fp32", padding="buckets")
    pairs = list(PARITY_PAIRS)
    assert bucketed.predict(pairs) == pytest.approx(fixed.predict(pairs), abs=1e-5)  # fp32: padding is masked out exactly


@pytest.mark.parametrize(
    ("variant", "padding"), [("fp32", "buckets"), ("int8-calibrated", "buckets"), ("int8", "fixed"), ("eager-int8", "fixed")]
)
def test_auto_padding_buckets_only_artifacts_built_batch_invariant(tiny_artifacts: Path, variant: str, padding: str):
    assert Runtime.load(tiny_artifacts / variant).padding == padding
    assert Runtime.load(tiny_artifacts / variant, padding="fixed").padding == "fixed"  # an explicit choice wins


def test_int8_calibrated_refuses_an_engine_or_cpu_it_cannot_run_on(tiny_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torch

    engine = torch.backends.quantized.engine
    try:
        configure_process(quantized_engine="onednn")
        with pytest.raises(ArtifactError, match="runs on the x86 or fbgemm quantized engine, not onednn"):
            Runtime.load(tiny_artifacts / "int8-calibrated")
    finally:
        torch.backends.quantized.engine = engine
    monkeypatch.setattr("artifact.kernels.int8_kernel_exact", lambda: False)  # an AVX2-only CPU
    Runtime.load(tiny_artifacts / "int8-calibrated")  # 8-bit activations x 7-bit weights: exact there too
    eight_by_eight = with_int8_widths(tiny_artifacts / "int8-calibrated", tmp_path / "int8-calibrated", weight_bits=8)
    with pytest.raises(ArtifactError, match="saturates 8-bit activations x 8-bit weights"):
        Runtime.load(eight_by_eight)
    Runtime.load(tiny_artifacts / "int8")  # dynamic int8 has no such need


def test_int8_calibrated_scores_do_not_depend_on_companions_or_padding(tiny_artifacts: Path):
    """The point of the variant: dynamic int8 moves a pair's score with its batch; calibrated int8 does not."""
    pairs = list(PARITY_PAIRS)
    target = [pairs[0]]
    for variant, invariant in (("int8-calibrated", True), ("int8", False)):
        fixed = Runtime.load(tiny_artifacts / variant, padding="fixed")
        bucketed = Runtime.load(tiny_artifacts / variant, padding="buckets")
        scores = [
            fixed.predict(target)[0],  # alone, padded to 8x128
            fixed.predict(target + pairs[9:16])[0],  # with seven other pairs
            bucketed.predict(target)[0],  # alone at 1x32
            bucketed.predict(target + pairs[1:8])[0],  # with others, at a wider bucket
        ]
        spread = max(scores) - min(scores)
        assert (spread < 1e-6) is invariant, (variant, scores)


def with_int8_widths(source: Path, copy: Path, *, weight_bits: int) -> Path:
    """A copy of an int8-calibrated artifact whose manifest claims other weight widths (as a VNNI-only build would)."""
    shutil.copytree(source, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["int8"]["weight_bits"] = weight_bits
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.skipif(not int8_kernel_exact(), reason="this host's int8 kernel is AVX2: it cannot run 8 x 8")
def test_a_vnni_host_runs_an_8x8_artifact_as_built(tiny_artifacts: Path, tmp_path: Path):
    from artifact.runtime import choose_artifact

    vnni_only = with_int8_widths(tiny_artifacts / "int8-calibrated", tmp_path / "int8-calibrated", weight_bits=8)
    assert choose_artifact(vnni_only).folder == vnni_only and not choose_artifact(vnni_only).fallback


def test_an_artifacts_root_serves_the_best_variant_this_host_runs(tiny_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from artifact.runtime import choose_artifact

    assert choose_artifact(tiny_artifacts, "torchscript").folder == tiny_artifacts / "int8-calibrated"  # (auto: tests/unit/test_engines.py)
    assert choose_artifact(tiny_artifacts / "fp32").folder == tiny_artifacts / "fp32"  # an explicit variant stays
    root = tmp_path / "artifacts"
    root.mkdir()
    vnni_only = with_int8_widths(tiny_artifacts / "int8-calibrated", root / "int8-calibrated", weight_bits=8)
    shutil.copytree(tiny_artifacts / "int8", root / "int8")
    monkeypatch.setattr("artifact.kernels.int8_kernel_exact", lambda: False)  # an AVX2-only CPU, whatever this host is
    for given in (root, vnni_only):
        choice = choose_artifact(given)
        assert choice.folder == root / "int8", choice
    assert "saturates" in choose_artifact(vnni_only).reason and "serving int8" in choose_artifact(vnni_only).reason
    shutil.rmtree(root / "int8")
    with pytest.raises(ArtifactError, match="saturates"):
        choose_artifact(vnni_only)  # nothing here can run: refused


def test_an_artifact_of_an_older_format_is_refused_with_one_rebuild_line(tiny_artifacts: Path, tmp_path: Path):
    from artifact.manifest import FORMAT_VERSION, read_manifest

    old = tmp_path / "int8"
    shutil.copytree(tiny_artifacts / "int8", old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 2
    del manifest["int8"]  # as the previous format wrote it
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=rf"format version 2; this paraserve reads {FORMAT_VERSION}: rebuild the artifact"):
        read_manifest(old)
    manifest["format_version"] = FORMAT_VERSION  # the current version, but a field missing: the same one-line kind of refusal
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"field 'int8': Field required: rebuild the artifact"):
        read_manifest(old)
