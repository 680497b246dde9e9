"""A tiny random BERT sequence classifier with a real uncased vocabulary, for tests and demos."""

from __future__ import annotations

import shutil
from pathlib import Path

from artifact.encoding import LABELS
from model_build.checkpoint import RANDOM_INIT_KEY, load_tokenizer
from model_build.errors import BuildError
from model_build.finetune import default_base_model


def init_tiny(out: Path, *, seed: int = 0, layers: int = 2, hidden: int = 32, force: bool = False) -> Path:
    """Write a 2-layer, 32-wide BertForSequenceClassification checkpoint with all-MiniLM-L6-v2's vocabulary."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    if out.exists() and not force:
        raise BuildError(f"{out} exists; pass --force to replace it")
    vocab_source = default_base_model()
    tokenizer = load_tokenizer(vocab_source)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
        architectures=["BertForSequenceClassification"],
        # Wider than BERT's 0.02 so the random logits differ between inputs and the checks have something to see.
        initializer_range=0.2,
        **{RANDOM_INIT_KEY: True},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    shutil.copy2(vocab_source / "vocab.txt", out / "vocab.txt")
    return out
