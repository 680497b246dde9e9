"""A teacher's scores of the train pairs, for a recipe that distils (Recipe.teacher_weight > 0).

Why it was tried: the cascade's answers match the accurate model's only where the fast model agrees with it outside
the uncertainty band. On MRPC dev the default MiniLM disagrees with the accurate MPNet on 16% of pairs, a third of
those with a fast score above 0.85, where no band sends them on. Trained on the accurate model's P(paraphrase) instead
of the labels, the fast model might learn where the accurate one is unsure or overrules the label.

What it gave (`search --candidate distil-swap-5e-5 --teacher-search <MPNet's search>`, 3 folds, AMD EPYC): a better
fast model alone (out-of-fold F1 0.8413 against 0.8361) but a worse first stage: the cascade needs 27.0% of train
escalated for F1 within 0.5 point of the accurate model, where the undistilled MiniLM needs 21.0%, and from 15%
escalated on, its curve of F1 against share escalated is 0.3 point lower (docs/model.md, "The cascade's fast
model"). The cascade keeps the undistilled default; the recipe stays for the next fast model to try it.

Where the targets come from, so that no score a band is chosen by comes from a model that saw its pair:
- `finetune --teacher`: the teacher checkpoint (trained on all of train) scores every train pair;
- `search --teacher-search`: fold k's student takes the targets that fold k's teacher (trained on the same pairs, never
  on fold k) gave the pairs it trained on (`fitted` in the teacher's search JSON; search.fold_targets), so fold k is unseen by both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

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
    """What training.json records of the teacher: which weights taught the student."""
    weights = teacher / "model.safetensors"
    if not weights.is_file():
        raise BuildError(f"the teacher {teacher} has no model.safetensors: fine-tune it first")
    return {"checkpoint": teacher.name, "weights_sha256": sha256_file(weights)}
