"""The cascade's band is chosen on out-of-fold train scores for its goal, at the lowest share escalated, and its
cross-validated figures come from choosing on the other folds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from model_build.cascade import AtMostShare, WithinPoints, choose, choose_band, outcome
from model_build.errors import BuildError
from tests.conftest import write_mrpc


def test_the_band_reaches_the_goal_at_the_lowest_share_escalated():
    rng = random.Random(3)
    labels = [rng.random() < 0.65 for _ in range(600)]
    accurate = [0.9 if y else 0.1 for y in labels]  # always right
    fast = [(0.9 if y else 0.1) if rng.random() < 0.8 else rng.uniform(0.3, 0.7) for y in labels]  # unsure on a fifth
    chosen = choose(fast, accurate, [int(y) for y in labels], WithinPoints(0.5))
    assert chosen.f1 >= 1.0 - 0.005
    assert 0.3 <= chosen.low <= 0.5 <= chosen.high <= 0.71
    assert chosen.escalated <= sum(1 for f in fast if 0.3 <= f < 0.71) / len(fast)
    none = outcome(0.5, 0.5, fast, accurate, [int(y) for y in labels])
    assert none.escalated == 0.0 and none.f1 < chosen.f1


def test_a_share_bound_takes_the_best_band_within_it():
    rng = random.Random(4)
    labels = [rng.random() < 0.65 for _ in range(600)]
    accurate = [0.9 if y else 0.1 for y in labels]
    fast = [(0.9 if y else 0.1) if rng.random() < 0.8 else rng.uniform(0.3, 0.7) for y in labels]
    y = [int(v) for v in labels]
    unsure = sum(1 for f in fast if 0.3 <= f < 0.71) / len(fast)
    wide, narrow = choose(fast, accurate, y, AtMostShare(1.0)), choose(fast, accurate, y, AtMostShare(unsure / 2))
    assert wide.f1 == 1.0 and wide.escalated <= unsure  # the perfect F1 at the least share that reaches it
    assert narrow.escalated <= unsure / 2 and narrow.f1 < wide.f1
    best_within = max(outcome(lo, hi, fast, accurate, y).f1 for lo in (0.3, 0.4, 0.5) for hi in (0.5, 0.6, 0.71)
                      if outcome(lo, hi, fast, accurate, y).escalated <= unsure / 2)  # fmt: skip
    assert narrow.f1 >= best_within


def test_the_choice_reads_train_only_and_reports_figures_chosen_elsewhere(tmp_path: Path):
    data = write_mrpc(tmp_path / "mrpc", rows=60, splits=("train",))  # no dev.tsv: it is never read
    rng = random.Random(5)

    def search(candidate: str, noise: float) -> dict:
        runs = []
        for fold in range(3):
            held = {i: min(1.0, max(0.0, (0.8 if (i + 1) % 2 else 0.2) + rng.uniform(-noise, noise))) for i in range(fold, 60, 3)}
            runs.append({"candidate": candidate, "seed": 42, "fold": fold, "held_out": {str(k): v for k, v in held.items()}})
        return {"chosen": {"candidate": candidate}, "seeds": [42], "runs": runs, "base_model": candidate}

    chosen = choose_band(search("fast", 0.5), search("accurate", 0.05), data)
    assert len(chosen["cross_validated"]["folds"]) == 3 and chosen["train_pairs"] == 60
    assert chosen["alone_out_of_fold"]["accurate"]["f1"] > chosen["alone_out_of_fold"]["fast"]["f1"]
    with pytest.raises(BuildError, match="no held-out scores"):
        choose_band({"chosen": {"candidate": "x"}, "seeds": [42], "runs": []}, search("accurate", 0.05), data)
