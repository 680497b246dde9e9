from __future__ import annotations

from pathlib import Path

import pytest

from model_build.errors import BuildError
from model_build.mrpc import load_split, read_tsv
from model_build.scoring import f1_accuracy, f1_gap_interval
from tests.conftest import MRPC_HEADER, write_mrpc


def test_f1_and_accuracy_on_hand_made_cases():
    # tp=2, fp=1, fn=1, tn=1 -> F1 = 4 / (4 + 1 + 1)
    figures = f1_accuracy([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert figures["f1"] == pytest.approx(4 / 6)
    assert figures["accuracy"] == pytest.approx(3 / 5)
    assert f1_accuracy([0, 0], [0, 0]) == {"f1": 0.0, "accuracy": 1.0}
    assert f1_accuracy([1, 0], [1, 0]) == {"f1": 1.0, "accuracy": 1.0}
    with pytest.raises(ValueError, match="2 labels but 1"):
        f1_accuracy([1, 0], [1])


def test_the_gap_interval_is_paired_and_brackets_the_gap():
    labels = [1, 0] * 50
    assert f1_gap_interval(labels, labels, labels, rounds=200) == (0.0, 0.0)  # the same answers: no gap in any resample
    # the second is wrong on 10 of 100 pairs the first gets right: the resamples favour the first, by about the gap
    second = [1 - y if i < 10 else y for i, y in enumerate(labels)]
    gap = f1_accuracy(labels, labels)["f1"] - f1_accuracy(labels, second)["f1"]
    low, high = f1_gap_interval(labels, labels, second, rounds=500)
    assert 0.0 < low < gap < high
    assert f1_gap_interval(labels, second, labels, rounds=500) == (-high, -low)  # the same resamples, the gap reversed
    with pytest.raises(ValueError, match="100 labels but 100 and 1"):
        f1_gap_interval(labels, labels, [1])
    with pytest.raises(ValueError, match="level must be in"):
        f1_gap_interval(labels, labels, labels, level=90)


def test_reads_bom_header_and_bare_quotes(tmp_path: Path):
    pairs = load_split(write_mrpc(tmp_path, rows=4), "dev")
    assert len(pairs) == 4
    assert pairs[0].label == 1 and pairs[1].label == 0
    assert pairs[2].sentence1 == 'He said "no comment" and left.'  # bare quotes kept, not parsed as quoting


def test_malformed_line_names_file_and_line(tmp_path: Path):
    path = tmp_path / "dev.tsv"
    path.write_text(MRPC_HEADER + "1\t1\t2\tonly one sentence\n", encoding="utf-8")
    with pytest.raises(BuildError, match=r"dev\.tsv:2: expected 5 tab-separated columns, found 4"):
        read_tsv(path)
    path.write_text(MRPC_HEADER + "yes\t1\t2\ta\tb\n", encoding="utf-8")
    with pytest.raises(BuildError, match=r"dev\.tsv:2: label must be 0 or 1"):
        read_tsv(path)


def test_missing_split_explains_what_mrpc_is(tmp_path: Path):
    write_mrpc(tmp_path, splits=("train",))
    with pytest.raises(BuildError, match=r"has no dev\.tsv.*Microsoft Research Paraphrase Corpus.*--data-dir"):
        load_split(tmp_path, "dev")
    with pytest.raises(BuildError, match="does not exist"):
        load_split(tmp_path / "nowhere", "dev")
