from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_build.cli import main
from model_build.evaluate import evaluate_artifacts, render_table
from model_build.mrpc import load_split
from tests.conftest import MRPC_HEADER, write_mrpc


def hand_f1(labels: list[int], predicted: list[int]) -> tuple[float, float]:
    """F1 of the paraphrase class and accuracy, counted here by hand (not by model_build.scoring, which is under test)."""
    tp = sum(1 for y, p in zip(labels, predicted, strict=True) if y == p == 1)
    fp = sum(1 for y, p in zip(labels, predicted, strict=True) if y == 0 and p == 1)
    fn = sum(1 for y, p in zip(labels, predicted, strict=True) if y == 1 and p == 0)
    right = sum(1 for y, p in zip(labels, predicted, strict=True) if y == p)
    return (2 * tp / (2 * tp + fp + fn) if tp else 0.0), right / len(labels)


def test_evaluate_scores_fp32_as_the_checkpoint_itself_does(tiny_checkpoint: Path, tiny_artifacts: Path, mrpc_dir: Path):
    """The expected figures come from the Hugging Face checkpoint run directly (transformers, not the artifact or
    the runtime under test), labelled and counted by hand."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    (row,) = evaluate_artifacts([tiny_artifacts / "fp32"], mrpc_dir)
    pairs = load_split(mrpc_dir, "dev")
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = BertForSequenceClassification.from_pretrained(tiny_checkpoint, return_dict=False).eval()
    encoded = tokenizer(
        [p.sentence1 for p in pairs], [p.sentence2 for p in pairs], padding=True, truncation=True, max_length=128, return_tensors="pt"
    )
    with torch.inference_mode():
        (logits,) = model(**encoded)
    predicted = [int(i) for i in logits.argmax(-1)]  # argmax of two logits: P(paraphrase) >= 0.5, ties aside
    f1, accuracy = hand_f1([p.label for p in pairs], predicted)
    assert row["variant"] == "fp32" and row["pairs"] == 20 and row["batches"] == 3
    assert row["f1"] == pytest.approx(f1) and row["accuracy"] == pytest.approx(accuracy)
    assert row["model_bytes"] == (tiny_artifacts / "fp32" / "model.pt").stat().st_size


def test_evaluate_reports_the_figures_of_its_own_scores(tiny_artifacts: Path, mrpc_dir: Path):
    results = evaluate_artifacts([tiny_artifacts / "fp32", tiny_artifacts / "int8"], mrpc_dir)
    labels = [p.label for p in load_split(mrpc_dir, "dev")]
    for row, variant in zip(results, ("fp32", "int8"), strict=True):
        f1, accuracy = hand_f1(labels, [int(s >= 0.5) for s in row["scores"]])
        assert row["variant"] == variant and row["f1"] == pytest.approx(f1) and row["accuracy"] == pytest.approx(accuracy)
    table = render_table(results)
    assert "fp32" in table and "int8" in table and "0.901" in table  # the tutorial's figure beside ours


def test_evaluate_cli_writes_json(tiny_artifacts: Path, mrpc_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "eval.json"
    code = main(
        [
            "--log-level",
            "ERROR",
            "evaluate",
            "--artifact",
            str(tiny_artifacts / "debug"),
            "--artifact",
            str(tiny_artifacts / "eager-int8"),
            "--data-dir",
            str(mrpc_dir),
            "--json",
            str(out),
        ]
    )
    assert code == 0
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["debug", "eager-int8"]
    assert "eager-int8" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("no_split", r"has no dev\.tsv"),
        ("malformed", r"dev\.tsv:3: expected 5 tab-separated columns"),
        ("tampered", r"refusing a modified model"),
        ("not_artifact", r"is not a paraserve artifact"),
    ],
)
def test_evaluate_bad_input_exits_2(case: str, pattern: str, tiny_artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import re

    data = write_mrpc(tmp_path / "mrpc", rows=4)
    artifact = tmp_path / "int8"
    shutil.copytree(tiny_artifacts / "int8", artifact)
    if case == "no_split":
        (data / "dev.tsv").unlink()
    elif case == "malformed":
        (data / "dev.tsv").write_text(MRPC_HEADER + "1\t1\t2\ta\tb\n1\t1\t2\tbroken\n", encoding="utf-8")
    elif case == "tampered":
        (artifact / "model.pt").write_bytes((artifact / "model.pt").read_bytes()[:-10] + b"0123456789")
    elif case == "not_artifact":
        (artifact / "manifest.json").unlink()
    code = main(["--log-level", "ERROR", "evaluate", "--artifact", str(artifact), "--data-dir", str(data)])
    err = capsys.readouterr().err
    assert code == 2 and re.search(pattern, err), err
    assert "Traceback" not in err


def test_finetune_one_step_writes_a_checkpoint_that_build_accepts(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    data = write_mrpc(tmp_path / "mrpc", rows=20)
    ckpt = tmp_path / "ft"
    code = main(
        [
            "--log-level",
            "ERROR",
            "finetune",
            "--data-dir",
            str(data),
            "--out",
            str(ckpt),
            "--base-model",
            str(tiny_checkpoint),
            "--max-steps",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "4",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((ckpt / "training.json").read_text())
    assert report["steps"] == 1 and report["train_examples"] == 20 and report["recipe"]["batch_size"] == 4
    assert 0.0 <= report["dev_f1"] <= 1.0 and report["cpu"]["cpu_model"]
    assert (ckpt / "vocab.txt").is_file() and (ckpt / "tokenizer.json").is_file()
    assert not (tmp_path / "ft.partial").exists()
    assert main(["--log-level", "ERROR", "build", "--model-dir", str(ckpt), "--out", str(tmp_path / "a"), "--variant", "int8"]) == 0
    assert (tmp_path / "a" / "int8" / "manifest.json").is_file()


def test_length_sorted_batches_cover_every_example_once():
    import random

    from model_build.finetune import length_sorted_batches

    lengths = [random.Random(i).randint(5, 120) for i in range(50)]
    batches = length_sorted_batches(lengths, 16, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert [len(b) for b in sorted(batches, key=len)] == [2, 16, 16, 16]
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches if len(b) == 16]
    assert max(spreads) < max(lengths) - min(lengths)  # batches group similar lengths


def test_ensure_default_builds_once_then_reuses_and_rebuilds_a_tampered_cache(tiny_checkpoint: Path, mrpc_dir: Path, tmp_path: Path):
    from model_build.default_model import ensure_default_artifacts

    cache = tmp_path / "cache"
    first = ensure_default_artifacts(cache, tmp_path / "no-mrpc", model_dir=tiny_checkpoint)
    assert {p.name for p in first.iterdir()} == {"fp32", "int8"}  # the served and compared variants; nothing to calibrate on
    assert ensure_default_artifacts(cache, mrpc_dir, model_dir=tiny_checkpoint) == first
    assert {p.name for p in first.iterdir()} == {"fp32", "int8", "int8-calibrated", "openvino-int8"}  # MRPC now given: rebuilt
    stamp = (first / "int8" / "manifest.json").stat().st_mtime_ns
    assert ensure_default_artifacts(cache, mrpc_dir, model_dir=tiny_checkpoint) == first
    assert (first / "int8" / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    (first / "int8" / "model.pt").write_bytes(b"tampered")
    assert ensure_default_artifacts(cache, mrpc_dir, model_dir=tiny_checkpoint) == first
    assert (first / "int8" / "manifest.json").stat().st_mtime_ns != stamp


def test_ensure_default_prints_only_the_folder_on_stdout_whatever_the_build_prints(tiny_checkpoint: Path, mrpc_dir: Path, tmp_path: Path):
    # scripts/serve.sh serves what this prints: NNCF's progress bars (building openvino-int8) once went to stdout too,
    # and the first clean-clone start failed with "artifact folder Statistics collection ... does not exist".
    args = ["ensure-default", "--cache", str(tmp_path / "cache"), "--data-dir", str(mrpc_dir), "--model-dir", str(tiny_checkpoint)]
    done = subprocess.run([sys.executable, "-m", "model_build", *args], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("\n") == 1, done.stdout[:2000]
    folder = Path(done.stdout.strip())
    assert folder.is_dir() and "openvino-int8" in {p.name for p in folder.iterdir()}


def test_ensure_default_without_mrpc_explains_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = main(["ensure-default", "--cache", str(tmp_path / "cache"), "--data-dir", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Microsoft Research Paraphrase Corpus" in err and "MRPC_DIR=" in err


def test_ensure_default_retrains_a_checkpoint_of_an_earlier_recipe_once(
    tiny_checkpoint: Path, mrpc_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from dataclasses import asdict

    from model_build import default_model
    from model_build.finetune import FinetuneReport

    cache = tmp_path / "cache"
    checkpoint = cache / "default" / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    (checkpoint / "training.json").write_text(json.dumps({"config": {"epochs": 3}, "best_epoch": 3}))  # the pre-recipe default's
    trained: list[str] = []

    def fake_finetune(data_dir: Path, out: Path, *, base_model: Path, config: default_model.FinetuneConfig, force: bool) -> FinetuneReport:
        trained.append(str(out))
        shutil.rmtree(out)
        shutil.copytree(tiny_checkpoint, out)
        (out / "training.json").write_text(json.dumps({"recipe": asdict(config.recipe), "seed": config.seed}))
        return FinetuneReport("tiny", asdict(config.recipe), config.seed, 20, 20)

    monkeypatch.setattr(default_model, "finetune", fake_finetune)
    artifacts = default_model.ensure_default_artifacts(cache, mrpc_dir)
    assert trained == [str(checkpoint)] and (artifacts / "int8-calibrated" / "manifest.json").is_file()
    assert default_model.ensure_default_artifacts(cache, mrpc_dir) == artifacts and len(trained) == 1  # now current: reused


def test_a_checkpoint_recorded_before_a_recipe_field_existed_is_still_its_recipes(tmp_path: Path):
    """A field added to Recipe later means its default for older records; any recorded difference still retrains."""
    from dataclasses import asdict

    from model_build.finetune import trained_with
    from model_build.recipes import Recipe

    current = Recipe(learning_rate=2e-5)
    older = {k: v for k, v in asdict(current).items() if k != "teacher_weight"}  # recorded before distillation existed
    (tmp_path / "training.json").write_text(json.dumps({"recipe": older, "seed": 42}))
    assert trained_with(tmp_path, current, 42)
    assert not trained_with(tmp_path, Recipe(learning_rate=2e-5, teacher_weight=0.5), 42)
    assert not trained_with(tmp_path, Recipe(learning_rate=5e-5), 42) and not trained_with(tmp_path, current, 7)
