"""Tiny random sequence classifiers (BERT, MPNet: any registered family) with a real uncased vocabulary, for tests and demos."""

from __future__ import annotations

import shutil
from pathlib import Path

from artifact.encoding import LABELS
from model_build.bases import BASES, DEFAULT_BASE
from model_build.checkpoint import RANDOM_INIT_KEY, load_tokenizer
from model_build.errors import BuildError
from model_build.families import FAMILIES


def init_tiny(out: Path, *, family: str = "bert", seed: int = 0, layers: int = 2, hidden: int = 32, force: bool = False) -> Path:
    """Write a 2-layer, 32-wide sequence classifier of `family` with all-MiniLM-L6-v2's vocabulary, laid out in the
    family's pair template."""
    import torch
    import transformers

    if out.exists() and not force:
        raise BuildError(f"{out} exists; pass --force to replace it")
    kind = FAMILIES.get(family)
    if kind is None:
        raise BuildError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    vocab_source = BASES[DEFAULT_BASE].locate(Path())
    tokenizer = load_tokenizer(vocab_source)
    if kind.tiny_tokenizer is not None:
        tokenizer = kind.tiny_tokenizer(tokenizer)
    config = getattr(transformers, kind.config_class)(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=514,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
        architectures=[kind.classifier],
        # Wider than BERT's 0.02 so the random logits differ between inputs and the checks have something to see.
        initializer_range=0.2,
        **{RANDOM_INIT_KEY: True},
    )
    torch.manual_seed(seed)
    model = kind.classifier_class()(config).eval()
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    shutil.copy2(vocab_source / "vocab.txt", out / "vocab.txt")
    return out
