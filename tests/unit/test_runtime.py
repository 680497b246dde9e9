"""Shape choice of the runtime: fixed 8x128, or the cheapest verified bucket."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.runtime import Runtime
from model_build.encoding import EncodedPair
from model_build.parity_pairs import PARITY_PAIRS


def row(n: int) -> EncodedPair:
    return EncodedPair(tuple([101] + [2000] * (n - 2) + [102]), tuple([0] * n))


def test_fixed_padding_always_uses_the_trace_shape(tiny_artifacts: Path):
    rt = Runtime.load(tiny_artifacts / "int8")
    assert rt.shape_for([row(5)]) == (8, 128)
    assert rt.forward([row(5)]).padded.input_ids.shape == (8, 128)


def test_buckets_use_the_cheapest_verified_shape(tiny_artifacts: Path):
    rt = Runtime.load(tiny_artifacts / "int8", padding="buckets")
    assert rt.columns == [32, 64, 96, 128]
    assert rt.shape_for([row(5)]) == (1, 32)
    assert rt.shape_for([row(5), row(33), row(7)]) == (3, 64)
    assert rt.shape_for([row(128)] * 8) == (8, 128)
    assert rt.columns_for(row(96)) == 96 and rt.columns_for(row(97)) == 128
    assert rt.forward([row(40), row(10)]).padded.input_ids.shape == (2, 64)


def test_buckets_only_use_shapes_the_manifest_verified(tiny_artifacts: Path):
    rt = Runtime.load(tiny_artifacts / "int8", padding="buckets")
    rt.manifest = dict(rt.manifest, verified_shapes=[[8, 64], [8, 128]])
    narrowed = Runtime(rt.artifact_dir, rt.manifest, rt.module, "buckets")
    assert narrowed.shape_for([row(5)]) == (8, 64)


def test_bucketed_fp32_scores_equal_fixed_padding(tiny_artifacts: Path):
    fixed = Runtime.load(tiny_artifacts / "fp32")
    bucketed = Runtime.load(tiny_artifacts / "fp32", padding="buckets")
    pairs = list(PARITY_PAIRS)
    assert bucketed.predict(pairs) == pytest.approx(fixed.predict(pairs), abs=1e-5)  # fp32: padding is masked out exactly
