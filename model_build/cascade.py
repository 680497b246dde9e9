"""Choose a cascade's uncertainty band on MRPC train by cross-validation (dev is never read), and write its file.

The inputs are two `search` runs (model_build/search.py), one per model, each of which kept every held-out pair's
P(paraphrase) after its last epoch: out-of-fold scores of the whole train split, from models that never trained on
the pair they scored. A band [low, high) sends the pairs whose fast score lies in it to the accurate model; on the
out-of-fold scores, a band's F1 and its share of pairs escalated are what serving it would give on unseen pairs of
MRPC's kind (with fp32 scores; the served int8 ones differ by their own small margin).

Two goals: F1 within `points` of the accurate model alone at the lowest share escalated (WithinPoints, the default,
0.5 point), or the best F1 escalating at most a share of pairs (AtMostShare: a bound on cost). The band is chosen on
all of train; its cross-validated figures come from choosing it on all folds but one and scoring it on that one, fold
by fold, so they are not the figures it was chosen by.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from artifact.cascade import CASCADE_FORMAT, CascadeBand, CascadeFile, write_cascade
from artifact.kernels import cpu_description
from model_build.errors import BuildError
from model_build.mrpc import load_split
from model_build.scoring import f1_accuracy
from model_build.search import runs_of

log = logging.getLogger(__name__)

STEP = 0.01  # the band's edges are searched on this grid
THRESHOLD = 0.5


@dataclass(frozen=True)
class Outcome:
    low: float
    high: float
    f1: float
    accuracy: float
    escalated: float  # share of pairs sent to the accurate model


def out_of_fold(search: dict[str, Any], candidate: str | None = None, seed: int | None = None) -> tuple[dict[int, float], dict[int, int]]:
    """Held-out scores of every train pair (index -> P(paraphrase)) and each pair's fold, from one search's runs of one
    candidate and seed (default: the search's chosen candidate, its first seed)."""
    runs = runs_of(search, candidate, seed)
    if not runs or any("held_out" not in r for r in runs):
        named = f"candidate {candidate or search['chosen']['candidate']!r}, seed {search['seeds'][0] if seed is None else seed}"
        raise BuildError(f"the search has no held-out scores for {named}: rerun `python -m model_build search`")
    scores, folds = {}, {}
    for run in runs:
        for index, score in run["held_out"].items():
            scores[int(index)] = float(score)
            folds[int(index)] = int(run["fold"])
    return scores, folds


def answers(scores: Sequence[float]) -> list[int]:
    """1 for "paraphrase" at the threshold the service answers by."""
    return [int(s >= THRESHOLD) for s in scores]


def outcome(low: float, high: float, fast: Sequence[float], accurate: Sequence[float], labels: Sequence[int]) -> Outcome:
    final = [a if low <= f < high else f for f, a in zip(fast, accurate, strict=True)]
    figures = f1_accuracy(labels, answers(final))
    escalated = sum(1 for f in fast if low <= f < high) / len(fast)
    return Outcome(low, high, figures["f1"], figures["accuracy"], escalated)


def bands() -> list[tuple[float, float]]:
    edges = [round(i * STEP, 4) for i in range(round(1 / STEP) + 1)]
    return [(lo, hi) for lo in edges if lo <= THRESHOLD for hi in edges if hi >= THRESHOLD]


@dataclass(frozen=True)
class WithinPoints:
    """F1 within `points` of the accurate model alone, at the lowest share escalated (ties: higher F1, then the
    narrower band): the accurate model's answers at the least cost."""

    points: float

    def describe(self) -> str:
        return f"F1 within {self.points:g} point of the accurate model alone, at the lowest share escalated"

    def pick(self, outcomes: Sequence[Outcome], accurate_f1: float) -> Outcome | None:
        met = [o for o in outcomes if o.f1 >= accurate_f1 - self.points / 100]
        return min(met, key=lambda o: (o.escalated, -o.f1, o.high - o.low)) if met else None


@dataclass(frozen=True)
class AtMostShare:
    """The best F1 escalating at most `share` of pairs (ties: the lower share, then the narrower band): a cost bound.
    By forward cost a cascade serves c_accurate / (c_fast + share x c_accurate) times the accurate model's pairs/s, so a
    share is a speed-up on a given CPU (docs/performance.md, "Several models and the cascade")."""

    share: float

    def describe(self) -> str:
        return f"the best F1 escalating at most {self.share:.0%} of pairs"

    def pick(self, outcomes: Sequence[Outcome], accurate_f1: float) -> Outcome | None:
        met = [o for o in outcomes if o.escalated <= self.share]
        return min(met, key=lambda o: (-o.f1, o.escalated, o.high - o.low)) if met else None


Goal = WithinPoints | AtMostShare


def choose(fast: Sequence[float], accurate: Sequence[float], labels: Sequence[int], goal: Goal) -> Outcome:
    """The band of every band on the grid that best meets `goal` on these scores."""
    accurate_f1 = f1_accuracy(labels, answers(accurate))["f1"]
    picked = goal.pick([outcome(lo, hi, fast, accurate, labels) for lo, hi in bands()], accurate_f1)
    if picked is None:  # escalating everything is the accurate model itself, and no band at all escalates nothing
        raise BuildError(f"no band meets the goal: {goal.describe()}")
    return picked


def curve(fast: Sequence[float], accurate: Sequence[float], labels: Sequence[int]) -> list[dict[str, float]]:
    """Symmetric bands 0.5 +- w: F1 against share escalated (what the docs plot)."""
    points = []
    for i in range(0, 51, 5):
        w = i / 100
        points.append(asdict(outcome(0.5 - w, 0.5 + w + (1e-9 if w == 0.5 else 0.0), fast, accurate, labels)))
    return points


def choose_band(
    fast_search: dict[str, Any],
    accurate_search: dict[str, Any],
    data_dir: Path,
    *,
    goal: Goal = WithinPoints(0.5),
    fast_candidate: str | None = None,
    accurate_candidate: str | None = None,
) -> dict[str, Any]:
    """The band, its figures on all of train and fold by fold (chosen on the other folds), and the curve."""
    labels_all = [p.label for p in load_split(data_dir, "train")]
    fast, folds = out_of_fold(fast_search, fast_candidate)
    accurate, _ = out_of_fold(accurate_search, accurate_candidate)
    pairs = sorted(set(fast) & set(accurate))
    if len(pairs) < len(labels_all) * 0.99:
        raise BuildError(
            f"the two searches score {len(pairs)} common train pairs of {len(labels_all)}: were they run on the same train split?"
        )
    f = [fast[i] for i in pairs]
    a = [accurate[i] for i in pairs]
    y = [labels_all[i] for i in pairs]
    chosen = choose(f, a, y, goal)
    per_fold = []
    for k in sorted(set(folds.values())):
        inside = [j for j, i in enumerate(pairs) if folds[i] == k]
        outside = [j for j, i in enumerate(pairs) if folds[i] != k]
        picked = choose([f[j] for j in outside], [a[j] for j in outside], [y[j] for j in outside], goal)
        scored = outcome(picked.low, picked.high, [f[j] for j in inside], [a[j] for j in inside], [y[j] for j in inside])
        per_fold.append({"fold": k, "band_chosen_on_other_folds": [picked.low, picked.high], **asdict(scored)})
    alone = {
        "fast": f1_accuracy(y, answers(f)),
        "accurate": f1_accuracy(y, answers(a)),
    }
    mean = {key: sum(r[key] for r in per_fold) / len(per_fold) for key in ("f1", "accuracy", "escalated")}
    return {
        "goal": goal.describe(),
        "train_pairs": len(pairs),
        "band": [chosen.low, chosen.high],
        "on_train_out_of_fold": asdict(chosen),
        "alone_out_of_fold": alone,
        "cross_validated": {"mean": mean, "folds": per_fold},
        "curve_symmetric": curve(f, a, y),
        "fast_search": {"candidate": fast_candidate or fast_search["chosen"]["candidate"], "base_model": fast_search["base_model"]},
        "accurate_search": {
            "candidate": accurate_candidate or accurate_search["chosen"]["candidate"],
            "base_model": accurate_search["base_model"],
        },
        "cpu": cpu_description(),
        "chosen_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write(out: Path, name: str, fast_name: str, accurate_name: str, chosen: dict[str, Any]) -> Path:
    low, high = chosen["band"]
    cascade = CascadeFile(
        format_version=CASCADE_FORMAT,
        name=name,
        fast=fast_name,
        accurate=accurate_name,
        band=CascadeBand(low=low, high=high),
        chosen=chosen,
    )
    return write_cascade(out, cascade)


def render(chosen: dict[str, Any]) -> str:
    o, cv = chosen["on_train_out_of_fold"], chosen["cross_validated"]["mean"]
    alone = chosen["alone_out_of_fold"]
    lines = [
        f"goal: {chosen['goal']}",
        f"train, out of fold: fast alone F1 {alone['fast']['f1']:.4f}, accurate alone F1 {alone['accurate']['f1']:.4f}",
        f"band [{o['low']:.2f}, {o['high']:.2f}): F1 {o['f1']:.4f}, {o['escalated']:.1%} escalated (chosen on all of train)",
        f"cross-validated (chosen on the other folds): F1 {cv['f1']:.4f}, accuracy {cv['accuracy']:.4f}, {cv['escalated']:.1%} escalated",
        "symmetric bands 0.5 +- w: "
        + ", ".join(f"{p['high'] - 0.5:.2f}: F1 {p['f1']:.4f} at {p['escalated']:.1%}" for p in chosen["curve_symmetric"]),
    ]
    return "\n".join(lines)


def read_search(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read the search {path}: {exc}") from exc
