"""Choose a fine-tuning recipe by k-fold cross-validation on MRPC train; dev is never read here.

Why: dev (408 pairs) is too small and too reused to choose by. A swap-augmented model once scored 1.9 points
lower on dev and 0.8 higher on 1,725 held-out pairs than the recipe dev had chosen.

Folds are stratified by label and grouped: pairs that share a sentence (267 train sentences occur in more than one
pair) fall in one fold, so a held-out pair never has a sentence the fold's model trained on, and the swapped twin of a
pair is made from it inside its own fold. Each candidate is trained once per fold (and seed); its held-out fold is
scored after every epoch (the curve gives the epoch count for free, with the schedule the candidate declares), and after
the last epoch also with each pair's P(paraphrase) averaged over both sentence orders: what test-time order averaging
would add at twice the inference cost. Every held-out pair's P(paraphrase) after the last epoch is kept in the JSON
(`held_out`: train index -> score): out-of-fold scores of the whole train split, from which a cascade's uncertainty
band is chosen (model_build/cascade.py) without a model ever scoring a pair it trained on. Each fold's model also
scores the pairs it trained on (`fitted`): a teacher's targets for a student trained on the same fold
(model_build/distill.py), so that the student's held-out fold is unseen by both.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from artifact.kernels import available_cpus, cpu_description
from model_build.checkpoint import Checkpoint, load_base
from model_build.errors import BuildError
from model_build.finetune import (
    EncodedSet,
    encode_pairs,
    estimated_seconds,
    paraphrase_probabilities,
    resolve_precision,
    score,
    train,
    training_steps,
)
from model_build.mrpc import Pair, load_split
from model_build.progress import progress
from model_build.recipes import DEFAULT_SEED, Recipe, recipe

log = logging.getLogger(__name__)

FOLD_SEED = 0  # one split for every candidate and seed, so their scores differ by the recipe alone


def sentence_groups(pairs: Sequence[Pair]) -> list[int]:
    """A group id per pair: pairs linked by a shared sentence (in either position) share a group (union-find)."""
    parent = list(range(len(pairs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_seen: dict[str, int] = {}
    for i, pair in enumerate(pairs):
        for sentence in (pair.sentence1, pair.sentence2):
            j = first_seen.setdefault(sentence.strip(), i)
            parent[find(i)] = find(j)
    return [find(i) for i in range(len(pairs))]


def stratified_group_folds(pairs: Sequence[Pair], k: int, seed: int = FOLD_SEED) -> list[int]:
    """A fold number per pair: no group split across folds, each fold's share of paraphrases as close as groups allow.

    Groups are dealt, largest first and in a seeded order among equals, to the fold that holds the fewest pairs of the
    group's majority label (ties: the fewest pairs).
    """
    if not 2 <= k <= len(pairs):
        raise BuildError(f"cross-validation needs 2 <= folds <= {len(pairs)} pairs; got {k}")
    members: dict[int, list[int]] = defaultdict(list)
    for i, group in enumerate(sentence_groups(pairs)):
        members[group].append(i)
    rng = random.Random(seed)
    groups = list(members.values())
    rng.shuffle(groups)
    groups.sort(key=len, reverse=True)
    per_label = [[0, 0] for _ in range(k)]  # [fold][label] -> pairs
    fold_of = [0] * len(pairs)
    for group in groups:
        positives = sum(pairs[i].label for i in group)
        label = int(2 * positives >= len(group))
        fold = min(range(k), key=lambda f: (per_label[f][label], sum(per_label[f]), f))
        for i in group:
            fold_of[i] = fold
            per_label[fold][pairs[i].label] += 1
    return fold_of


def mean_std(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def search(
    data_dir: Path,
    candidates: Sequence[str],
    *,
    folds: int = 3,
    seeds: Sequence[int] = (DEFAULT_SEED,),
    base_model: Path,
    threads: int | None = None,
    max_length: int = 128,
    limit_train: int | None = None,
    max_steps: int | None = None,
    teacher_search: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cross-validate each named recipe on MRPC train; return per-fold, per-epoch figures and the chosen recipe.

    The choice is the (candidate, epoch) with the highest mean held-out F1 over folds and seeds. A candidate that
    distils trains fold k on the scores fold k's teacher gave its own training pairs (`teacher_search`'s `fitted`).
    """
    import torch

    recipes = {name: recipe(name) for name in dict.fromkeys(candidates)}
    if not recipes:
        raise BuildError("no candidate recipes to search")
    if teacher_search is None and (distilling := [name for name, r in recipes.items() if r.distils]):
        raise BuildError(f"{', '.join(distilling)} distil from a teacher: pass the teacher's search (--teacher-search)")
    base = base_model
    pairs = load_split(data_dir, "train")[:limit_train]  # the only split read
    fold_of = stratified_group_folds(pairs, folds)
    torch.set_num_threads(threads or available_cpus())
    precisions = {p: resolve_precision(p, torch.get_num_threads()) for p in {r.precision for r in recipes.values()}}
    probe = load_base(base)
    parameters = sum(p.numel() for p in probe.model.parameters())
    data = encode_pairs(probe.tokenizer, pairs, max_length)
    del probe
    splits = [([i for i, f in enumerate(fold_of) if f != k], [i for i, f in enumerate(fold_of) if f == k]) for k in range(folds)]

    total = sum(training_steps(len(tr), r, max_steps) for r in recipes.values() for _ in seeds for tr, _ in splits)
    minutes = estimated_seconds(total, torch.get_num_threads(), parameters) / 60
    shape = (len(recipes), len(seeds), folds, len(pairs), total, minutes, "; ".join(why for _, why in precisions.values()))
    log.info("cross-validating %d recipes x %d seeds x %d folds of %d train pairs: %d steps, about %.0f minutes here (%s)", *shape)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    with progress(total=total, desc="search", unit="step") as bar:
        for name, r in recipes.items():
            for seed in seeds:
                for k, (train_ids, held_ids) in enumerate(splits):
                    bar.set_description(f"search {name} seed {seed} fold {k + 1}/{folds}", refresh=False)
                    bf16 = precisions[r.precision][0]
                    own = data.subset(train_ids)
                    if r.distils and teacher_search is not None:
                        own = own.with_teacher(fold_targets(teacher_search, k, train_ids))
                    run = _fold(base, own, data.subset(held_ids), r, seed=seed, bar=bar, bf16=bf16, max_steps=max_steps)
                    run["held_out"] = dict(zip(held_ids, run["held_out"], strict=True))
                    run["fitted"] = dict(zip(train_ids, run["fitted"], strict=True))
                    runs.append({"candidate": name, "seed": seed, "fold": k} | run)
                    log.info("%s seed %d fold %d: held-out F1 by epoch %s", name, seed, k + 1, [round(e["f1"], 4) for e in run["epochs"]])
    result = _summarise(recipes, runs, folds, seeds, len(pairs), time.perf_counter() - started, base)
    result["precision"] = {str(p): why for p, (_, why) in precisions.items()}
    return result


def runs_of(result: dict[str, Any], candidate: str | None = None, seed: int | None = None) -> list[dict[str, Any]]:
    """A search result's runs of one candidate (default: the chosen one) at one seed (default: its first), one per fold."""
    candidate = candidate or result["chosen"]["candidate"]
    seed = result["seeds"][0] if seed is None else seed
    return [r for r in result["runs"] if r["candidate"] == candidate and r["seed"] == seed]


def fold_targets(teacher_search: dict[str, Any], fold: int, train_ids: Sequence[int]) -> list[float]:
    """Fold `fold`'s teacher's scores of the pairs it trained on, in `train_ids` order; a BuildError unless the
    teacher's search trained that fold on exactly these pairs (the same train split and folds)."""
    runs = [r for r in runs_of(teacher_search) if r["fold"] == fold]
    if not runs or "fitted" not in runs[0]:
        raise BuildError(
            f"the teacher's search has no scores of its fold {fold + 1}'s training pairs: rerun its `python -m model_build search`"
        )
    fitted = {int(i): float(s) for i, s in runs[0]["fitted"].items()}
    if set(fitted) != set(train_ids):
        raise BuildError(
            f"the teacher's fold {fold + 1} trained on {len(fitted)} pairs, not the same {len(train_ids)} as this search's: "
            "run both searches on the same train split with the same --folds"
        )
    return [fitted[i] for i in train_ids]


def _fold(
    base: Path,
    own: EncodedSet,
    held: EncodedSet,
    r: Recipe,
    *,
    seed: int,
    bar: Any,
    bf16: bool,
    max_steps: int | None,
) -> dict[str, Any]:
    """Train a fresh base model on the other folds (`own`); score the held-out fold after each epoch (both orders after
    the last), and the pairs it trained on after the last (in `own`'s and `held`'s orders)."""
    import torch

    torch.manual_seed(seed)
    ckpt: Checkpoint = load_base(base)
    curve: list[dict[str, float]] = []
    last: list[float] = []

    def held_out(epoch: int) -> None:
        p = paraphrase_probabilities(ckpt, held.rows)
        last[:] = p
        curve.append({"epoch": epoch, **score(held.labels, p)})
        if epoch == r.epochs:  # what averaging both orders would add
            q = paraphrase_probabilities(ckpt, held.swapped)
            both = score(held.labels, [(a + b) / 2 for a, b in zip(p, q, strict=True)])
            curve[-1] |= {"f1_both_orders": both["f1"], "accuracy_both_orders": both["accuracy"]}

    started = time.perf_counter()
    losses = train(ckpt, own, r, seed=seed, bar=bar, bf16=bf16, max_steps=max_steps, after_epoch=held_out)
    return {
        "held_out": last,
        "fitted": paraphrase_probabilities(ckpt, own.rows),
        "train_pairs": len(own.rows),
        "held_out_pairs": len(held.rows),
        "held_out_paraphrase_share": sum(held.labels) / len(held.labels),
        "seconds": time.perf_counter() - started,
        "epochs": [c | {"train_loss": e["train_loss"]} for c, e in zip(curve, losses, strict=True)],
    }


def _summarise(
    recipes: dict[str, Recipe], runs: list[dict[str, Any]], folds: int, seeds: Sequence[int], n_pairs: int, seconds: float, base: Path
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    best: tuple[float, str, int] | None = None
    for name, r in recipes.items():
        own = [run for run in runs if run["candidate"] == name]
        by_epoch = {}
        for epoch in range(1, r.epochs + 1):
            rows = [e for run in own for e in run["epochs"] if e["epoch"] == epoch]
            if len(rows) != len(own):  # a max_steps run that stopped early
                continue
            by_epoch[epoch] = {"f1": mean_std([e["f1"] for e in rows]), "accuracy": mean_std([e["accuracy"] for e in rows])}
            if best is None or by_epoch[epoch]["f1"]["mean"] > best[0]:
                best = (by_epoch[epoch]["f1"]["mean"], name, epoch)
        last = [run["epochs"][-1] for run in own if "f1_both_orders" in run["epochs"][-1]]
        summary[name] = {
            "recipe": asdict(r),
            "by_epoch": by_epoch,
            "both_orders_last_epoch": mean_std([e["f1_both_orders"] for e in last]) if last else None,
            "seconds": sum(run["seconds"] for run in own),
        }
    if best is None:
        raise BuildError("no candidate finished an epoch; raise --max-steps")
    _, name, epoch = best
    chosen = recipes[name] if epoch == recipes[name].epochs else replace(recipes[name], epochs=epoch, schedule_epochs=recipes[name].epochs)
    return {
        "train_pairs": n_pairs,
        "folds": folds,
        "seeds": list(seeds),
        "base_model": base.name,
        "candidates": summary,
        "chosen": {"candidate": name, "epoch": epoch, "recipe": asdict(chosen), "cv_f1": summary[name]["by_epoch"][epoch]["f1"]},
        "runs": runs,
        "seconds": seconds,
        "cpu": cpu_description(),
    }


def render(result: dict[str, Any]) -> str:
    """One line per candidate and epoch: held-out F1 and accuracy, mean +- std over folds and seeds."""
    head = f"{'candidate':22s} {'epoch':>5s} {'CV F1':>15s} {'CV accuracy':>15s} {'both orders F1':>15s}"
    lines = [f"{result['folds']}-fold CV on {result['train_pairs']} MRPC train pairs, seeds {result['seeds']}", head, "-" * len(head)]
    for name, c in result["candidates"].items():
        for epoch, e in c["by_epoch"].items():
            both = c["both_orders_last_epoch"] if int(epoch) == c["recipe"]["epochs"] and c["both_orders_last_epoch"] else None
            both_text = f"{both['mean']:.4f} ± {both['std']:.4f}" if both else ""
            lines.append(
                f"{name:22s} {epoch:>5} {e['f1']['mean']:.4f} ± {e['f1']['std']:.4f} "
                f"{e['accuracy']['mean']:.4f} ± {e['accuracy']['std']:.4f} {both_text:>15s}"
            )
    chosen = result["chosen"]
    figure = f"CV F1 {chosen['cv_f1']['mean']:.4f}"
    lines.append(f"chosen: {chosen['candidate']} after epoch {chosen['epoch']} ({figure}): {json.dumps(chosen['recipe'])}")
    return "\n".join(lines)


def write(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
