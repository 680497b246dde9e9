"""Distillation: a recipe that trains on a teacher's scores, and where the scores come from (finetune: the teacher
checkpoint; search: each fold's teacher)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model_build import distill as distill_module
from model_build.checkpoint import load_base
from model_build.cli import main
from model_build.errors import BuildError
from model_build.finetune import FinetuneConfig, encode_pairs, epoch_examples, finetune, train
from model_build.mrpc import load_split
from model_build.recipes import Augmentation, Recipe, recipe
from model_build.search import fold_targets
from tests.model.test_search import synthetic_pairs, write_split

HARD = Recipe(epochs=1, learning_rate=1e-3, batch_size=4, augmentation=Augmentation.SWAP)


class _Bar:
    def update(self, _n: int) -> None: ...

    def set_postfix(self, **_kw: object) -> None: ...


def _trained_weights(checkpoint: Path, recipe_: Recipe, teacher: list[float] | None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ckpt = load_base(checkpoint)
    data = encode_pairs(ckpt.tokenizer, synthetic_pairs(12, seed=3), 64)
    if teacher is not None:
        data = data.with_teacher(teacher)
    train(ckpt, data, recipe_, seed=0, bar=_Bar())
    return {k: v.clone() for k, v in ckpt.model.state_dict().items()}


def test_a_teacher_that_repeats_the_labels_trains_the_same_weights_and_one_that_does_not_other_weights(tiny_checkpoint: Path):
    labels = [p.label for p in synthetic_pairs(12, seed=3)]
    distilled = replace(HARD, teacher_weight=1.0)
    hard = _trained_weights(tiny_checkpoint, HARD, None)
    same = _trained_weights(tiny_checkpoint, distilled, [float(y) for y in labels])
    other = _trained_weights(tiny_checkpoint, distilled, [0.5 + (0.3 if y else -0.3) * 0.1 for y in labels])
    assert all(torch.equal(hard[k], same[k]) for k in hard)
    assert any(not torch.equal(hard[k], other[k]) for k in hard)


def test_targets_mix_label_and_teacher_by_the_recipes_weight_and_keep_through_swaps(tiny_checkpoint: Path):
    ckpt = load_base(tiny_checkpoint)
    pairs = synthetic_pairs(8, seed=4)
    data = encode_pairs(ckpt.tokenizer, pairs, 64)
    assert data.targets(HARD) == data.labels
    with pytest.raises(BuildError, match="no teacher scored"):
        data.targets(replace(HARD, teacher_weight=0.5))
    with pytest.raises(BuildError, match=f"the teacher scored 3 pairs, not the {len(pairs)} "):
        data.with_teacher([0.1, 0.2, 0.3])
    scores = [i / 10 for i in range(len(pairs))]
    taught = data.with_teacher(scores)
    mixed = taught.targets(replace(HARD, teacher_weight=0.25))
    assert mixed == pytest.approx([0.75 * p.label + 0.25 * s for p, s in zip(pairs, scores, strict=True)])
    assert taught.subset([2, 5]).teacher == [scores[2], scores[5]]
    swapped = epoch_examples(taught, Augmentation.SWAP, random.Random(0), mixed)
    for i, (row, target) in enumerate(swapped):
        assert target == mixed[i] and row in (taught.rows[i], taught.swapped[i])


def test_teacher_weight_is_checked():
    with pytest.raises(BuildError, match="teacher weight must be in"):
        Recipe(teacher_weight=1.5)
    assert recipe("distil-swap-5e-5").distils and not recipe("swap-5e-5").distils


def test_finetune_distils_from_the_teachers_scores_of_train_only_and_records_the_teacher(
    tiny_checkpoint: Path, tiny_mpnet_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    data = tmp_path / "mrpc"
    write_split(data, "train", synthetic_pairs(10, seed=5))
    write_split(data, "dev", [replace(p, sentence1="dev " + p.sentence1) for p in synthetic_pairs(4, seed=6)])
    cfg = FinetuneConfig(replace(recipe("distil-swap-5e-5"), precision=recipe("swap-5e-5").precision), threads=1, max_steps=2)
    with pytest.raises(BuildError, match=r"distils from a teacher .* name its checkpoint"):
        finetune(data, tmp_path / "none", base_model=tiny_checkpoint, config=cfg)
    scored: list[list[str]] = []
    real = distill_module.teacher_scores

    def spy(teacher: Path, pairs: list, max_length: int) -> list[float]:
        scored.append([p.sentence1 for p in pairs])
        return real(teacher, pairs, max_length)

    monkeypatch.setattr("model_build.finetune.teacher_scores", spy)
    finetune(data, tmp_path / "ft", base_model=tiny_checkpoint, config=replace(cfg, teacher=tiny_mpnet_checkpoint))
    assert scored == [[p.sentence1 for p in load_split(data, "train")]]  # the teacher never sees dev
    saved = json.loads((tmp_path / "ft" / "training.json").read_text())
    assert saved["teacher"] == distill_module.teacher_identity(tiny_mpnet_checkpoint) and saved["recipe"]["teacher_weight"] == 1.0


def test_search_distils_each_fold_from_that_folds_teacher_and_refuses_another_split(tiny_checkpoint: Path, tmp_path: Path):
    data = tmp_path / "mrpc"
    write_split(data, "train", synthetic_pairs(30))
    teacher_json, student_json = tmp_path / "teacher.json", tmp_path / "student.json"
    base = ["--log-level", "ERROR", "search", "--data-dir", str(data), "--base-model", str(tiny_checkpoint), "--max-steps", "1"]
    assert main([*base, "--json", str(teacher_json), "--candidate", "swap-5e-5"]) == 0
    teacher = json.loads(teacher_json.read_text())
    for run in teacher["runs"]:  # every train pair is fitted by the two folds' models that trained on it
        assert set(run["fitted"]).isdisjoint(run["held_out"]) and len(run["fitted"]) == run["train_pairs"]
    distil = [*base, "--json", str(student_json), "--candidate", "distil-swap-5e-5"]
    assert main(distil) == 2  # no teacher named
    assert main([*distil, "--teacher-search", str(teacher_json)]) == 0
    student = json.loads(student_json.read_text())
    assert {r["fold"] for r in student["runs"]} == {0, 1, 2}
    with pytest.raises(BuildError, match="not the same"):
        fold_targets(teacher, 0, list(range(5)))
