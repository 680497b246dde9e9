"""The recipe search: grouped, stratified folds; label-keeping augmentation; dev never read, and scored once by finetune."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from model_build import finetune as finetune_module
from model_build import search as search_module
from model_build.checkpoint import load_tokenizer
from model_build.cli import main
from model_build.errors import BuildError
from model_build.finetune import encode_pairs, epoch_examples
from model_build.mrpc import Pair, load_split
from model_build.recipes import RECIPES, Augmentation, Recipe, recipe
from model_build.search import sentence_groups, stratified_group_folds
from tests.conftest import MRPC_HEADER

MRPC = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mrpc"


def synthetic_pairs(n: int = 90, seed: int = 0) -> list[Pair]:
    """Pairs with shared sentences (chains of 1-4 pairs), a swapped twin, ~2/3 paraphrases, like MRPC."""
    rng = random.Random(seed)
    pairs: list[Pair] = []
    sentence = 0
    while len(pairs) < n:
        chain = [f"sentence {sentence + j} about topic {rng.randint(0, 999)}." for j in range(rng.randint(2, 5))]
        sentence += len(chain)
        for a, b in itertools.pairwise(chain):
            pairs.append(Pair(a, b, int(rng.random() < 0.68)))
    pairs.append(Pair(pairs[0].sentence2, pairs[0].sentence1, pairs[0].label))  # a swapped twin, as a separate row
    return pairs


def write_split(folder: Path, split: str, pairs: list[Pair]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{p.label}\t{i}\t{i + 1}\t{p.sentence1}\t{p.sentence2}\n" for i, p in enumerate(pairs))
    (folder / f"{split}.tsv").write_text(MRPC_HEADER + rows, encoding="utf-8")


def assert_folds_sound(pairs: list[Pair], fold_of: list[int], k: int, max_share_gap: float) -> None:
    sentence_folds: dict[str, set[int]] = {}
    for pair, fold in zip(pairs, fold_of, strict=True):
        for s in (pair.sentence1, pair.sentence2):
            sentence_folds.setdefault(s, set()).add(fold)
    assert all(len(folds) == 1 for folds in sentence_folds.values()), "a sentence is in two folds"
    orders = {(p.sentence1, p.sentence2): f for p, f in zip(pairs, fold_of, strict=True)}
    for (a, b), fold in orders.items():
        assert orders.get((b, a), fold) == fold, "a pair and its swapped twin are in two folds"
    assert sorted(set(fold_of)) == list(range(k))
    overall = sum(p.label for p in pairs) / len(pairs)
    for fold in range(k):
        labels = [p.label for p, f in zip(pairs, fold_of, strict=True) if f == fold]
        assert abs(sum(labels) / len(labels) - overall) <= max_share_gap, (fold, sum(labels) / len(labels), overall)
    sizes = Counter(fold_of).values()
    assert max(sizes) - min(sizes) <= max(4, len(pairs) // 20)


def test_folds_keep_linked_pairs_and_swapped_twins_together_and_stratify_labels():
    pairs = synthetic_pairs()
    groups = sentence_groups(pairs)
    assert groups[0] == groups[-1]  # the twin joins its pair's group
    fold_of = stratified_group_folds(pairs, 3)
    assert_folds_sound(pairs, fold_of, 3, max_share_gap=0.08)
    assert fold_of == stratified_group_folds(pairs, 3)  # the same split every run
    assert fold_of != stratified_group_folds(pairs, 3, seed=1)


@pytest.mark.skipif(not (MRPC / "train.tsv").is_file(), reason="GLUE MRPC is not beside the project")
def test_folds_of_real_mrpc_train_share_no_sentence_and_keep_the_paraphrase_share():
    pairs = load_split(MRPC, "train")
    fold_of = stratified_group_folds(pairs, 3)
    assert_folds_sound(pairs, fold_of, 3, max_share_gap=0.005)


@pytest.mark.parametrize("k", [1, 0, 10_000])
def test_fold_count_out_of_range_is_a_clear_error(k: int):
    with pytest.raises(BuildError, match="2 <= folds"):
        stratified_group_folds(synthetic_pairs(), k)


def test_augmentation_keeps_each_pairs_label_and_swaps_its_sentences(tiny_checkpoint: Path):
    tokenizer = load_tokenizer(tiny_checkpoint)
    pairs = [Pair("the cat sat.", "a dog ran far away.", 1), Pair("prices rose.", "markets fell sharply today.", 0)] * 3
    data = encode_pairs(tokenizer, pairs, 128)
    swapped = tokenizer("a dog ran far away.", "the cat sat.")
    assert list(data.swapped[0].input_ids) == swapped["input_ids"] and list(data.swapped[0].token_type_ids) == swapped["token_type_ids"]
    rng = random.Random(0)
    assert epoch_examples(data, Augmentation.NONE, rng) == list(zip(data.rows, data.labels, strict=True))
    both = epoch_examples(data, Augmentation.BOTH, rng)
    assert len(both) == 2 * len(pairs) and Counter(both) == Counter(zip(data.rows + data.swapped, data.labels * 2, strict=True))
    seen_orders = set()
    for _ in range(5):
        swap = epoch_examples(data, Augmentation.SWAP, rng)
        assert len(swap) == len(pairs)
        for i, (row, label) in enumerate(swap):
            assert label == pairs[i].label and row in (data.rows[i], data.swapped[i])
            seen_orders.add(row == data.swapped[i])
    assert seen_orders == {True, False}


def test_recipes_are_checked_and_named():
    assert recipe("both-5e-5").passes_per_epoch == 2 and recipe("swap-5e-5").passes_per_epoch == 1
    with pytest.raises(BuildError, match="unknown recipe 'nope'"):
        recipe("nope")
    with pytest.raises(BuildError, match="schedule_epochs"):
        Recipe(epochs=3, schedule_epochs=2)
    with pytest.raises(BuildError, match="warm-up"):
        Recipe(warmup_fraction=1.0)
    assert all(isinstance(r.augmentation, Augmentation) for r in RECIPES.values())


def test_search_reads_only_train_and_writes_every_fold(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "mrpc"
    pairs = synthetic_pairs(30)
    write_split(data, "train", pairs)  # no dev.tsv at all: the search must not need it
    read: list[str] = []
    real_load = search_module.load_split
    monkeypatch.setattr(search_module, "load_split", lambda d, split: read.append(split) or real_load(d, split))
    out = tmp_path / "search.json"
    args = ["--log-level", "ERROR", "search", "--data-dir", str(data), "--json", str(out), "--base-model", str(tiny_checkpoint)]
    code = main([*args, "--candidate", "plain-5e-5", "--candidate", "both-5e-5", "--max-steps", "2", "--seed", "1", "--seed", "2"])
    assert code == 0 and read == ["train"]
    result = json.loads(out.read_text())
    assert {(r["candidate"], r["seed"], r["fold"]) for r in result["runs"]} == {
        (c, s, f) for c in ("plain-5e-5", "both-5e-5") for s in (1, 2) for f in range(3)
    }
    assert sum(r["held_out_pairs"] for r in result["runs"]) == 2 * 2 * len(pairs)  # every pair held out once per candidate and seed
    assert result["chosen"]["candidate"] in ("plain-5e-5", "both-5e-5") and "cpu" in result
    assert set(result["candidates"]["plain-5e-5"]["by_epoch"]["1"]["f1"]) == {"mean", "std"}


def test_finetune_trains_on_train_only_and_scores_dev_once(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "mrpc"
    train_pairs, dev_pairs = synthetic_pairs(12, seed=1), [Pair("dev only sentence one.", "dev only sentence two.", 1)] * 4
    write_split(data, "train", train_pairs)
    write_split(data, "dev", dev_pairs)
    encoded: list[list[str]] = []
    real_encode = finetune_module.encode_pairs
    monkeypatch.setattr(
        finetune_module, "encode_pairs", lambda tok, pairs, n: encoded.append([p.sentence1 for p in pairs]) or real_encode(tok, pairs, n)
    )
    scored: list[int] = []
    real_scoring = finetune_module.paraphrase_probabilities
    monkeypatch.setattr(finetune_module, "paraphrase_probabilities", lambda m, rows: scored.append(len(rows)) or real_scoring(m, rows))
    trained: list[int] = []
    real_train = finetune_module.train
    monkeypatch.setattr(finetune_module, "train", lambda model, d, *a, **k: trained.append(len(d.rows)) or real_train(model, d, *a, **k))
    config = finetune_module.FinetuneConfig(recipe("swap-5e-5"), threads=1, max_steps=2)
    report = finetune_module.finetune(data, tmp_path / "ft", base_model=tiny_checkpoint, config=config)
    assert trained == [len(train_pairs)] and "dev only sentence one." not in encoded[0]
    assert scored == [len(dev_pairs)]  # dev: once, after training
    saved = json.loads((tmp_path / "ft" / "training.json").read_text())
    assert saved["recipe"]["augmentation"] == "swap" and saved["dev_f1"] == report.dev_f1 and saved["steps"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "--folds", "1"], "2 <= folds"),
        (["search", "--folds", "0"], "--folds: 0 must be at least 1"),
        (["--threads", "0", "search"], "--threads: 0 must be at least 1"),
        (["finetune", "--epochs", "-1"], "--epochs: -1 must be at least 1"),
        (["finetune", "--lr", "0"], "positive learning rate"),
    ],
)
def test_bad_training_settings_are_one_line_errors(
    args: list[str], message: str, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    data = tmp_path / "mrpc"
    write_split(data, "train", synthetic_pairs(30))
    write_split(data, "dev", synthetic_pairs(6, seed=2))
    where = ["--data-dir", str(data), "--base-model", str(tiny_checkpoint)]
    where += ["--json", str(tmp_path / "s.json")] if "search" in args else ["--out", str(tmp_path / "ft")]
    try:
        code = main(["--log-level", "ERROR", *args, *where])
    except SystemExit as exc:  # argparse rejects a malformed number itself
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
