"""The engines: openvino-int8 built from the same tiny checkpoint, run by the same Runtime, chosen by
`PARASERVE_ENGINE`, and a TorchScript fallback when OpenVINO is missing."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest

from app.core.start import open_runtime
from app.shared.config import Settings
from artifact.engines import ENGINES
from artifact.errors import ArtifactError, KernelUnsupported
from artifact.manifest import verify_artifact
from artifact.runtime import Runtime, choose_artifact
from model_build.parity_pairs import PARITY_PAIRS

pytest.importorskip("openvino", reason="the openvino extra is not installed here")


def test_openvino_int8_is_built_verified_and_recorded(tiny_artifacts: Path):
    manifest = verify_artifact(tiny_artifacts / "openvino-int8")
    assert manifest.engine == "openvino" and manifest.model_file == "model.xml" and set(manifest.extra_files) == {"model.bin"}
    assert manifest.size_bytes == sum((tiny_artifacts / "openvino-int8" / f).stat().st_size for f in ("model.xml", "model.bin"))
    assert manifest.parity["int8_matmuls"]["int8_matmuls"] >= 12  # every encoder Linear of the tiny BERT
    stability = manifest.parity["label_stability"]
    assert stability["labels_moved"] == 0 and stability["pairs"] == 40 and stability["splits"] == ["dev", "train"]
    assert manifest.batch_invariance is not None and manifest.batch_invariance.batch_invariant
    assert manifest.qconfig and manifest.qconfig["precision_hint"] == "f32"


def test_openvino_int8_scores_track_fp32_on_the_parity_pairs(tiny_artifacts: Path):
    """The tiny random BERT scores every pair near 0.5, so labels say nothing here (MRPC dev labels are the build's
    and bench/engines.py's business); its scores must follow fp32's: a wrong input order or a broken conversion
    gives a correlation near 0."""
    import numpy as np

    pairs = list(PARITY_PAIRS)
    openvino = Runtime.load(tiny_artifacts / "openvino-int8")
    fp32 = Runtime.load(tiny_artifacts / "fp32")
    assert openvino.engine_name == "openvino" and openvino.padding == "buckets"
    got, want = np.array(openvino.predict(pairs)), np.array(fp32.predict(pairs))
    assert np.corrcoef(got, want)[0, 1] > 0.8 and np.abs(got - want).max() < 0.15  # measured: 0.93 and 0.08


def test_two_workers_share_one_compiled_model_each_with_its_own_request(tiny_artifacts: Path):
    from concurrent.futures import ThreadPoolExecutor

    rt = Runtime.load(tiny_artifacts / "openvino-int8", workers=2)
    rows = rt.encode(list(PARITY_PAIRS))
    alone = [rt.forward([row]).scores[0] for row in rows]
    with ThreadPoolExecutor(2) as pool:  # two worker threads at once, as the batcher runs them
        together = [s for result in pool.map(rt.forward, [rows[i : i + 4] for i in range(0, len(rows), 4)]) for s in result.scores]
    assert together == pytest.approx(alone, abs=1e-6)
    assert rt.engine.config["NUM_STREAMS"] == "2"


def test_an_artifacts_root_races_the_two_int8_engines_under_auto(tiny_artifacts: Path, monkeypatch: pytest.MonkeyPatch, caplog):
    choice = choose_artifact(tiny_artifacts)
    assert choice.folder.name == "openvino-int8" and [p.name for p in choice.rivals] == ["int8-calibrated"]
    for faster, slower in (("openvino", "torchscript"), ("torchscript", "openvino")):
        monkeypatch.setattr(Runtime, "time_forward", lambda self, f=faster: 0.001 if self.engine_name == f else 0.002)
        with caplog.at_level(logging.INFO, logger="app.core.start"):
            rt = open_runtime(Settings(artifact_dir=tiny_artifacts, workers=1))
        assert rt.engine_name == faster and rt.selection.startswith("engine auto: the faster on this host")
        assert rt.selection.index(faster) < rt.selection.index(slower)  # fastest first, with both figures


def test_the_engine_setting_restricts_the_choice(tiny_artifacts: Path):
    assert choose_artifact(tiny_artifacts, "torchscript").folder.name == "int8-calibrated"
    assert choose_artifact(tiny_artifacts, "openvino").folder.name == "openvino-int8"
    assert choose_artifact(tiny_artifacts, "torchscript").rivals == ()
    with pytest.raises(ArtifactError, match="is a torchscript artifact, but PARASERVE_ENGINE is openvino"):
        choose_artifact(tiny_artifacts / "int8-calibrated", "openvino")


def test_without_openvino_torchscript_serves_with_one_warning(tiny_artifacts: Path, monkeypatch: pytest.MonkeyPatch, caplog):
    absent = dataclasses.replace(ENGINES["openvino"], missing=lambda: "OpenVINO is not installed here")
    monkeypatch.setitem(ENGINES, "openvino", absent)  # the registry entry says what it needs; here it is not installed
    choice = choose_artifact(tiny_artifacts / "openvino-int8")
    assert choice.folder.name == "int8-calibrated" and choice.fallback and "OpenVINO is not installed" in choice.reason
    with caplog.at_level(logging.INFO, logger="app.core.start"):
        rt = open_runtime(Settings(artifact_dir=tiny_artifacts, workers=1))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "app.core.start"]
    assert rt.engine_name == "torchscript" and len(warnings) == 1 and "OpenVINO is not installed" in warnings[0].getMessage()
    with pytest.raises(KernelUnsupported, match="OpenVINO is not installed"):
        choose_artifact(tiny_artifacts, "openvino")


def test_a_modified_weights_file_is_refused(tiny_artifacts: Path, tmp_path: Path):
    copy = shutil.copytree(tiny_artifacts / "openvino-int8", tmp_path / "openvino-int8")
    data = bytearray((copy / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.bin has sha256 \w+ but the manifest says \w+: refusing a modified model"):
        verify_artifact(copy)
    assert json.loads((copy / "manifest.json").read_text())["engine"] == "openvino"


def test_an_openvino_artifact_that_fails_to_compile_gives_way_to_torchscript(tiny_artifacts: Path, monkeypatch: pytest.MonkeyPatch, caplog):
    def refuse(self, *args, **kwargs):
        raise ArtifactError("cannot compile model.xml with OpenVINO: the CPU plugin refused it")

    monkeypatch.setattr("artifact.engines.openvino.OpenVINOEngine.__init__", refuse)
    with caplog.at_level(logging.INFO, logger="app.core.start"):
        rt = open_runtime(Settings(artifact_dir=tiny_artifacts, workers=1))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "app.core.start"]
    assert rt.engine_name == "torchscript" and rt.variant == "int8-calibrated"
    assert len(warnings) == 1 and "the CPU plugin refused it; serving int8-calibrated" in warnings[0]
    with pytest.raises(ArtifactError, match="the CPU plugin refused it"):  # asked for by name: no silent substitute
        open_runtime(Settings(artifact_dir=tiny_artifacts / "openvino-int8", workers=1, engine="openvino"))
