"""Fine-tune a checkpoint of a known family on MRPC train by a recipe; dev is scored once, at the end, and chooses nothing.

Why no epoch is chosen on dev any more (the recipe search): the previous default kept the best of 3 epochs by dev F1 and scored
0.8735 there but 0.8417 on 1,725 held-out pairs, while a swap-augmented model 1.9 points lower on dev scored 0.8500.
Recipes are now compared by cross-validation on train (model_build/search.py).

Speed, measured on the 2-core Xeon (MiniLM-L6, batch 16, ~53 tokens a pair): 2 threads, scaled-dot-product attention
and the fused AdamW step train ~30 pairs/s (690 steps of 16 in 358 s); 1 thread, eager attention and the per-tensor AdamW ~14 pairs/s (the
optimizer's 22M-parameter update alone took 0.13 s a step, fused 0.02 s). MPNet-base (109.5 M parameters, eager
attention: transformers has no sdpa kernel for it) takes 3.1-3.5 s a 16 x 56 step in fp32 on the 2-core AMD EPYC
(Zen 4) and 2.1-2.4 s under bf16 autocast (its AVX-512 BF16): `Precision.AUTO` trains in bf16 where a probe of this
host measures it clearly faster, as on Zen 4, and in fp32 where it is not (a Xeon without AMX ran bf16 far slower).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from artifact.encoding import EncodedPair, InputSpec, label_for, pad_batch, row_of
from artifact.kernels import available_cpus, cpu_description
from model_build.checkpoint import load_base
from model_build.distill import teacher_identity, teacher_scores
from model_build.errors import BuildError
from model_build.mrpc import Pair, load_split
from model_build.progress import progress
from model_build.recipes import DEFAULT_SEED, Augmentation, Precision, Recipe
from model_build.scoring import f1_accuracy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """A recipe plus how to run it here."""

    recipe: Recipe = field(default_factory=Recipe)
    seed: int = DEFAULT_SEED
    threads: int = field(default_factory=available_cpus)
    max_length: int = 128
    max_steps: int | None = None  # stop early (tests, smoke runs)
    limit_train: int | None = None  # use only the first N train pairs
    limit_dev: int | None = None
    teacher: Path | None = None  # the checkpoint whose scores a recipe that distils trains on


@dataclass
class FinetuneReport:
    """What training.json records."""

    base_model: str
    recipe: dict[str, Any]
    seed: int
    train_examples: int
    dev_examples: int
    steps: int = 0
    seconds: float = 0.0
    epochs: list[dict[str, float]] = field(default_factory=list)
    precision: str = ""  # what the recipe's precision came to on this host, and why
    dev_f1: float = 0.0  # scored once, after training
    dev_accuracy: float = 0.0
    cpu: dict[str, str] = field(default_factory=dict)
    teacher: dict[str, str] | None = None  # distill.teacher_identity of the teacher, for a recipe that distils


@dataclass(frozen=True)
class EncodedSet:
    """Pairs encoded in both sentence orders (tokenizing is cheap; the augmentation picks an order per epoch)."""

    rows: list[EncodedPair]
    swapped: list[EncodedPair]
    labels: list[int]
    teacher: list[float] | None = None  # a teacher's P(paraphrase) of each pair, for a recipe that distils

    def subset(self, indices: Sequence[int]) -> EncodedSet:
        teacher = None if self.teacher is None else [self.teacher[i] for i in indices]
        return EncodedSet([self.rows[i] for i in indices], [self.swapped[i] for i in indices], [self.labels[i] for i in indices], teacher)

    def with_teacher(self, scores: Sequence[float]) -> EncodedSet:
        if len(scores) != len(self.rows):
            raise BuildError(f"the teacher scored {len(scores)} pairs, not the {len(self.rows)} being trained on")
        return EncodedSet(self.rows, self.swapped, self.labels, list(scores))

    def targets(self, recipe: Recipe) -> list[int] | list[float]:
        """Each pair's training target: its label, or with a recipe that distils P(paraphrase) mixed from the label and
        the teacher's score by the recipe's teacher weight (cross-entropy is linear in its target, so this is the
        weighted sum of the label's loss and the teacher's)."""
        if not recipe.distils:
            return self.labels
        if self.teacher is None:
            raise BuildError(f"the recipe distils from a teacher (weight {recipe.teacher_weight:g}) but no teacher scored the pairs")
        w = recipe.teacher_weight
        return [(1.0 - w) * y + w * t for y, t in zip(self.labels, self.teacher, strict=True)]


def encode_pairs(tokenizer: Any, pairs: Sequence[Pair], max_length: int) -> EncodedSet:
    """Tokenize each pair as written and swapped, truncating longest-first as the service does."""

    def encode(first: list[str], second: list[str]) -> list[EncodedPair]:
        return [row_of(e) for e in tokenizer(first, second, truncation="longest_first", max_length=max_length).encodings]

    ones, twos = [p.sentence1 for p in pairs], [p.sentence2 for p in pairs]
    return EncodedSet(encode(ones, twos), encode(twos, ones), [p.label for p in pairs])


def epoch_examples(
    data: EncodedSet, augmentation: Augmentation, rng: random.Random, targets: Sequence[float] | None = None
) -> list[tuple[EncodedPair, float]]:
    """One epoch's (row, target) examples under the augmentation (targets: the labels unless given); a swapped row
    keeps its pair's target."""
    goal = data.labels if targets is None else targets
    plain = list(zip(data.rows, goal, strict=True))
    if augmentation is Augmentation.NONE:
        return plain
    if augmentation is Augmentation.SWAP:
        return [(s if rng.random() < 0.5 else r, y) for r, s, y in zip(data.rows, data.swapped, goal, strict=True)]
    return plain + list(zip(data.swapped, goal, strict=True))


def steps_per_epoch(examples: int, recipe: Recipe) -> int:
    return math.ceil(examples * recipe.passes_per_epoch / recipe.batch_size)


def training_steps(examples: int, recipe: Recipe, max_steps: int | None = None) -> int:
    """Optimizer steps `train` takes on `examples` pairs: the recipe's epochs, cut at `max_steps` if given."""
    total = steps_per_epoch(examples, recipe) * recipe.epochs
    return total if max_steps is None else min(total, max_steps)


def trained_with(checkpoint: Path, recipe: Recipe, seed: int) -> bool:
    """Whether a checkpoint's training.json records this recipe and seed, so the cached weights are its."""
    try:
        trained = json.loads((checkpoint / "training.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    recorded = trained.get("recipe")
    if not isinstance(recorded, dict):
        return False
    # A field added to Recipe after the checkpoint was trained is absent from its record and meant its default then
    # (teacher_weight 0: no teacher); without this, every cached checkpoint would retrain (MPNet-base: 35 minutes).
    defaults = {f.name: f.default for f in fields(Recipe) if f.default is not MISSING}
    # asdict keeps the Augmentation member, a StrEnum equal to the string the JSON holds.
    return {**defaults, **recorded} == asdict(recipe) and trained.get("seed") == seed


# Measured: a 16-pair MiniLM step takes ~0.65 s on the 2-core Xeon with 2 threads (~25 pairs/s; 0.5-0.7 s as the
# host's load varies). Only for the up-front estimate; the progress bar shows the real remaining time. A model's step
# costs about its parameter count's share of that (MPNet-base, 4.8x MiniLM's: 3.1 s fp32 measured on Zen 4).
SECONDS_PER_STEP_2_CORES = 0.65
MINILM_PARAMETERS = 22_700_000


def estimated_seconds(steps: int, threads: int, parameters: int = MINILM_PARAMETERS) -> float:
    """Rough training time of 16-pair steps on this host, scaled from the 2-core measurement (one thread: twice)."""
    return steps * SECONDS_PER_STEP_2_CORES * (parameters / MINILM_PARAMETERS) * 2 / max(1, min(threads, 2))


def bf16_speedup(threads: int) -> float:
    """How much faster a training-sized Linear (forward and backward, 896 x 768 x 3072) runs under bf16 autocast
    than in fp32 on this host: the median of 5 after a warm-up, each way."""
    import torch

    torch.set_num_threads(threads)
    layer = torch.nn.Linear(768, 3072)
    x = torch.randn(896, 768, requires_grad=True)

    def once(bf16: bool) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer(x)
        y.float().sum().backward()
        return time.perf_counter() - started

    times = {}
    for bf16 in (False, True):
        once(bf16)
        times[bf16] = sorted(once(bf16) for _ in range(5))[2]
    return times[False] / times[True]


# bf16 must win clearly for `auto` to take it: a probe that flips on a busy host would make training nondeterministic.
BF16_MIN_SPEEDUP = 1.3


def resolve_precision(precision: Precision, threads: int) -> tuple[bool, str]:
    """(train under bf16 autocast?, why) for a recipe's precision on this host."""
    if precision is not Precision.AUTO:
        return precision is Precision.BF16, f"{precision} as the recipe says"
    import torch

    if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, "fp32: this CPU has no bf16 kernels"
    speedup = bf16_speedup(threads)
    if speedup >= BF16_MIN_SPEEDUP:
        return True, f"bf16 autocast: {speedup:.2f}x fp32's speed on this host (auto takes it from {BF16_MIN_SPEEDUP}x)"
    return False, f"fp32: bf16 autocast ran {speedup:.2f}x fp32's speed here, under {BF16_MIN_SPEEDUP}x"


def length_sorted_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Group indices of similar length into batches (little padding), then shuffle the batch order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(rows: Sequence[EncodedPair], spec: InputSpec) -> dict[str, Any]:
    """Rows padded to the longest of them (dynamic padding), as the model's keyword arguments."""
    return pad_batch(list(rows), len(rows), max(len(r) for r in rows), spec).kwargs()


def train(
    ckpt: Any,
    data: EncodedSet,
    recipe: Recipe,
    *,
    seed: int,
    bar: Any,
    bf16: bool = False,
    max_steps: int | None = None,
    after_epoch: Callable[[int], None] | None = None,
) -> list[dict[str, float]]:
    """Train the checkpoint's model in place by the recipe (under bf16 autocast if `bf16`; the weights stay fp32);
    `after_epoch(epoch)` runs after each epoch. Returns each epoch's mean loss."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    model, spec = ckpt.model, ckpt.spec
    rng = random.Random(seed)
    total = training_steps(len(data.rows), recipe, max_steps)
    schedule = steps_per_epoch(len(data.rows), recipe) * (recipe.schedule_epochs or recipe.epochs)
    no_decay = ckpt.family.no_decay
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": recipe.weight_decay},
        {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(recipe.warmup_fraction * schedule), schedule)
    targets = data.targets(recipe)
    epochs: list[dict[str, float]] = []
    step = 0
    for epoch in range(1, recipe.epochs + 1):
        if step >= total:
            break
        model.train()
        examples = epoch_examples(data, recipe.augmentation, rng, targets)
        losses: list[float] = []
        for batch_ids in length_sorted_batches([len(row) for row, _ in examples], recipe.batch_size, rng):
            if step >= total:
                break
            batch = _collate([examples[i][0] for i in batch_ids], spec)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(**batch)[0]
            loss = torch.nn.functional.cross_entropy(logits.float(), _target_tensor([examples[i][1] for i in batch_ids], recipe.distils))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", refresh=False)
        epochs.append({"epoch": epoch, "train_loss": sum(losses) / max(len(losses), 1), "steps": len(losses)})
        if after_epoch is not None:
            after_epoch(epoch)
    return epochs


def _target_tensor(targets: Sequence[float], soft: bool) -> Any:
    """Class indices for labels; for a distilled target p, the two-class distribution (1 - p, p)."""
    import torch

    if not soft:
        return torch.tensor([int(t) for t in targets])
    p = torch.tensor(targets, dtype=torch.float32)
    return torch.stack([1.0 - p, p], dim=1)


def paraphrase_probabilities(ckpt: Any, rows: Sequence[EncodedPair], batch_size: int = 64) -> list[float]:
    """P(paraphrase) of each row from the eager model in fp32, length-sorted batches with dynamic padding."""
    import torch

    model = ckpt.model
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    probabilities = [0.0] * len(rows)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            logits = model(**_collate([rows[i] for i in chunk], ckpt.spec))[0]
            for i, p in zip(chunk, torch.softmax(logits, dim=-1)[:, 1].tolist(), strict=True):
                probabilities[i] = p
    return probabilities


def score(labels: Sequence[int], probabilities: Sequence[float]) -> dict[str, float]:
    """F1 and accuracy at the service's decision threshold."""
    return f1_accuracy(labels, [int(label_for(p) == "paraphrase") for p in probabilities])


def finetune(data_dir: Path, out: Path, *, base_model: Path, config: FinetuneConfig | None = None, force: bool = False) -> FinetuneReport:
    """Train on MRPC train by the recipe, score dev once, and write a checkpoint folder `build` accepts."""
    import torch

    cfg = config or FinetuneConfig()
    base = base_model
    if out.exists() and not force:
        raise BuildError(f"{out} exists; pass --force to replace it")
    train_pairs = load_split(data_dir, "train")[: cfg.limit_train]
    dev_pairs = load_split(data_dir, "dev")[: cfg.limit_dev]

    teacher_dir = cfg.teacher if cfg.recipe.distils else None
    if cfg.recipe.distils and teacher_dir is None:
        raise BuildError(f"the recipe distils from a teacher (weight {cfg.recipe.teacher_weight:g}): name its checkpoint (--teacher)")
    teacher = None if teacher_dir is None else teacher_identity(teacher_dir)

    torch.set_num_threads(cfg.threads)
    bf16, report_precision = resolve_precision(cfg.recipe.precision, cfg.threads)  # its probe draws random numbers: before the seed
    targets = None if teacher_dir is None else teacher_scores(teacher_dir, train_pairs, cfg.max_length)
    torch.manual_seed(cfg.seed)  # after the teacher, whose loading draws random numbers too
    ckpt = load_base(base)
    model, tokenizer = ckpt.model, ckpt.tokenizer
    data = encode_pairs(tokenizer, train_pairs, cfg.max_length)
    if targets is not None:
        data = data.with_teacher(targets)
    total = training_steps(len(train_pairs), cfg.recipe, cfg.max_steps)
    report = FinetuneReport(str(base.name), asdict(cfg.recipe), cfg.seed, len(train_pairs), len(dev_pairs), cpu=cpu_description())
    report.precision = report_precision
    report.teacher = teacher
    shape = (total, len(train_pairs), cfg.threads, cfg.seed, report_precision, json.dumps(report.recipe))
    log.info("fine-tuning %d steps (%d pairs, %d threads, seed %d, %s): %s", *shape)
    started = time.perf_counter()
    with progress(total=total, desc="finetune", unit="step") as bar:
        report.epochs = train(ckpt, data, cfg.recipe, seed=cfg.seed, bar=bar, bf16=bf16, max_steps=cfg.max_steps)
    report.steps = sum(int(e["steps"]) for e in report.epochs)
    report.seconds = time.perf_counter() - started
    dev = encode_pairs(tokenizer, dev_pairs, cfg.max_length)
    figures = score(dev.labels, paraphrase_probabilities(ckpt, dev.rows))
    report.dev_f1, report.dev_accuracy = figures["f1"], figures["accuracy"]
    log.info("trained in %.0f s; dev, scored once: F1 %.4f, accuracy %.4f", report.seconds, report.dev_f1, report.dev_accuracy)

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    # save_pretrained writes tokenizer.json but no vocab.txt; keep the base's for slow-tokenizer users.
    if (base / "vocab.txt").is_file():
        shutil.copy2(base / "vocab.txt", staging / "vocab.txt")
    (staging / "training.json").write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return report
