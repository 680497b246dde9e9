"""A teacher's scores of the train pairs, for a recipe that distils (Recipe.teacher_weight > 0).

Why the cascade's fast model is distilled: the cascade's answers match the accurate model's only where the fast model
agrees with it outside the uncertainty band. On MRPC dev the default MiniLM disagrees with the accurate MPNet on 16% of
pairs, and a third of those with a fast score above 0.85, where no band can send them on (docs/model.md, "The
cascade's fast model"). Trained on the accurate model's P(paraphrase) instead of the labels, the fast model learns
where the accurate one is unsure or overrules the label.

Where the targets come from, so that no score the band is chosen by comes from a model that saw its pair:
- `finetune`: the teacher checkpoint (the accurate model as served, trained on all of train) scores every train pair;
- `search`: fold k's student takes the targets that fold k's teacher (trained on the same pairs, never on fold k) gave
  the pairs it trained on (`fitted` in the teacher's search JSON), so fold k is unseen by both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from artifact.manifest import sha256_file
from model_build.errors import BuildError
from model_build.mrpc import Pair

log = logging.getLogger(__name__)


def teacher_scores(teacher: Path, pairs: Sequence[Pair], max_length: int) -> list[float]:
    """The teacher checkpoint's P(paraphrase) of each pair, tokenized by its own tokenizer, in fp32."""
    from model_build.checkpoint import load_base
    from model_build.finetune import encode_pairs, paraphrase_probabilities

    ckpt = load_base(teacher)
    log.info("scoring %d train pairs with the teacher %s", len(pairs), teacher)
    return paraphrase_probabilities(ckpt, encode_pairs(ckpt.tokenizer, pairs, max_length).rows)


def teacher_identity(teacher: Path) -> dict[str, str]:
    """What training.json records of the teacher: a student is retrained when its teacher's weights change."""
    weights = teacher / "model.safetensors"
    if not weights.is_file():
        raise BuildError(f"the teacher {teacher} has no model.safetensors: fine-tune it first")
    return {"checkpoint": teacher.name, "weights_sha256": sha256_file(weights)}


def fold_targets(teacher_search: dict[str, Any], fold: int, train_ids: Sequence[int]) -> list[float]:
    """Fold `fold`'s teacher's scores of the pairs it trained on, in `train_ids` order; a BuildError unless the
    teacher's search trained that fold on exactly these pairs (the same train split and folds)."""
    candidate, seed = teacher_search["chosen"]["candidate"], teacher_search["seeds"][0]
    runs = [r for r in teacher_search["runs"] if r["candidate"] == candidate and r["seed"] == seed and r["fold"] == fold]
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
