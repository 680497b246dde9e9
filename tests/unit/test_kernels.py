"""Both int8 kernel paths: an artifact gives the same scores on VNNI and on AVX2-only CPUs (FBGEMM_ENABLE_INSTRUCTIONS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from artifact.kernels import exact_on_saturating_kernels, int8_kernel_path
from artifact.runtime import Runtime
from model_build.parity_pairs import PARITY_PAIRS

SCORE = """
import json, sys
from pathlib import Path
from artifact.kernels import int8_kernel_path
from artifact.runtime import Runtime
from model_build.parity_pairs import PARITY_PAIRS
rt = Runtime.load(Path(sys.argv[1]), padding=sys.argv[2])
print(json.dumps({"path": int8_kernel_path(), "scores": rt.predict(list(PARITY_PAIRS))}))
"""


def scores_in_subprocess(artifact: Path, padding: str, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", SCORE, str(artifact), padding],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_widths_that_fit_int16_pair_sums():
    assert exact_on_saturating_kernels(8, 7) and exact_on_saturating_kernels(7, 8)
    assert not exact_on_saturating_kernels(8, 8)


@pytest.mark.parametrize(("variant", "padding"), [("int8-calibrated", "buckets"), ("int8", "fixed"), ("fp32", "buckets")])
@pytest.mark.skipif(int8_kernel_path() == "avx2", reason="this host's own int8 kernel path is AVX2: there is no second path to compare")
def test_scores_are_identical_on_the_avx2_kernel_path(tiny_artifacts: Path, variant: str, padding: str):
    avx2 = scores_in_subprocess(tiny_artifacts / variant, padding, FBGEMM_ENABLE_INSTRUCTIONS="AVX2")
    assert avx2["path"] == "avx2"
    here = Runtime.load(tiny_artifacts / variant, padding=padding).predict(list(PARITY_PAIRS))
    # Bit-identical: every int32 sum is exact on both paths, and ATen's fp32 kernels are the same in both processes.
    assert avx2["scores"] == here, (variant, int8_kernel_path())
