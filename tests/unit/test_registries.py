"""Registries, not branches: a stand-in engine and a stand-in model family are entries of their tables, and the core
serves them with no change outside the registries."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.main import create_app
from app.shared.config import Settings
from artifact.encoding import PaddedBatch
from artifact.engines import ENGINES, EngineSpec, ModelFiles, register
from artifact.manifest import MANIFEST_FILE, sha256_file
from model_build.families import FAMILIES, Family
from model_build.families import register as register_family


class EchoEngine:
    """A stand-in engine: logits (0, number of real tokens / 10) per row, whatever model file it was given."""

    name = "echo"

    def __init__(self, files: ModelFiles) -> None:
        self.bytes = len(files.model)

    def logits(self, padded: PaddedBatch) -> torch.Tensor:
        tokens = padded.attention_mask.sum(dim=1).float()
        return torch.stack([torch.zeros_like(tokens), tokens / 10], dim=1)


@pytest.fixture
def echo_engine(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(ENGINES, "echo", EngineSpec("echo", lambda files, _streams, _threads: EchoEngine(files), lambda: None))
    return "echo"


def echo_artifact(source: Path, out: Path) -> Path:
    """A copy of a built artifact that names the stand-in engine: its manifest says `echo`, its model file is the same."""
    import shutil

    shutil.copytree(source, out)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["engine"] = "echo"
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert sha256_file(out / manifest["model_file"]) == manifest["model_sha256"]
    return out


def test_a_registered_engine_serves_through_every_layer_unchanged(echo_engine: str, tiny_artifacts: Path, tmp_path: Path):
    folder = echo_artifact(tiny_artifacts / "fp32", tmp_path / "echo")
    app = create_app(Settings(artifact_dir=folder, workers=1), registry=CollectorRegistry())
    with TestClient(app) as client:
        answer = client.post("/predict", json={"pairs": [{"sentence1": "a cat", "sentence2": "a dog"}]}).json()
        assert client.get("/model").json()["engine"] == "echo"
    tokens = answer["predictions"][0]["tokens"]
    assert answer["predictions"][0]["score"] == pytest.approx(torch.softmax(torch.tensor([0.0, tokens / 10]), 0)[1].item(), abs=1e-6)


def test_an_unregistered_engine_is_refused_with_one_line(tiny_artifacts: Path, tmp_path: Path):
    from artifact.errors import ArtifactError
    from artifact.runtime import Runtime

    folder = echo_artifact(tiny_artifacts / "fp32", tmp_path / "echo")
    with pytest.raises(ArtifactError, match=r"unknown engine 'echo'; this paraserve runs openvino, torchscript"):
        Runtime.load(folder)


def test_a_registered_family_is_built_and_served_with_no_change_outside_its_entry(
    tiny_checkpoint: Path, mrpc_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A stand-in family: BERT's classes under another model_type, with its own input list. The build takes its entry;
    the service reads what the artifact says and needs nothing of it."""
    from model_build.build import BuildOptions, build

    stand_in = dataclasses.replace(FAMILIES["bert"], model_type="stand-in")
    monkeypatch.setitem(FAMILIES, "stand-in", stand_in)
    register_family(stand_in)
    checkpoint = tmp_path / "stand-in"
    import shutil

    shutil.copytree(tiny_checkpoint, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "stand-in"
    (checkpoint / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr("transformers.BertConfig.model_type", "stand-in", raising=False)
    manifests = build(checkpoint, tmp_path / "out", BuildOptions(name="stand-in", variants=("fp32",)))
    assert manifests["fp32"].source.family == "stand-in"
    app = create_app(Settings(artifact_dir=tmp_path / "out" / "fp32", workers=1), registry=CollectorRegistry())
    with TestClient(app) as client:
        assert client.post("/predict", json={"pairs": [{"sentence1": "a", "sentence2": "b"}]}).status_code == 200


def test_the_families_say_what_differs_between_bert_and_mpnet():
    assert FAMILIES["mpnet"].input_names == ("input_ids", "attention_mask") and FAMILIES["mpnet"].train_attention == "eager"
    assert FAMILIES["bert"].ffn_outputs(["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense"]) == [
        "bert.encoder.layer.0.output.dense"
    ]
    assert isinstance(FAMILIES["bert"], Family) and register(ENGINES["torchscript"]) is ENGINES["torchscript"]
