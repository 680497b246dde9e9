"""Load and validate a local Hugging Face sequence-classification checkpoint of a known family (never a hub download)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifact.encoding import LABELS, InputSpec
from model_build.errors import BuildError
from model_build.families import Family, family_of

log = logging.getLogger(__name__)

# Set in config.json by `init-tiny`: the weights are random, and every artifact built from them says so.
RANDOM_INIT_KEY = "paraserve_random_init"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the eager model, its fast tokenizer, its family and what the manifest records of it."""

    path: Path
    model: Any  # the family's transformers sequence-classification model
    tokenizer: Any  # transformers fast tokenizer
    config_sha256: str
    family: Family
    random_init: bool = False

    @property
    def spec(self) -> InputSpec:
        """What the model's forward takes: the family's inputs, padded with the tokenizer's padding id."""
        return self.family.input_spec(pad_id(self.tokenizer))


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's padding id (0 when it declares none, as BERT's [PAD] is)."""
    value = getattr(tokenizer, "pad_token_id", None)
    return 0 if value is None else int(value)


def read_config(model_dir: Path) -> dict[str, Any]:
    """Read config.json of a checkpoint folder, raising BuildError for anything of no known family."""
    if not model_dir.is_dir():
        raise BuildError(f"checkpoint folder {model_dir} does not exist")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise BuildError(f"{model_dir} is not a Hugging Face checkpoint: it has no config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildError(f"{config_path} is not readable JSON: {exc}") from exc
    family_of(config, str(model_dir))
    return config


def load_tokenizer(model_dir: Path, vocab_size: int | None = None) -> Any:
    """Load the checkpoint's fast tokenizer from its own folder; its ids must fit the model's embedding table."""
    from transformers import AutoTokenizer

    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        # transformers 5 would otherwise build an empty-vocabulary tokenizer without complaint.
        raise BuildError(f"cannot load a tokenizer from {model_dir}: it has neither tokenizer.json nor vocab.txt")
    try:
        # from_pretrained(dir), not BertTokenizer(vocab_file=...), which silently ignores the file in transformers 5.
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken folder
        raise BuildError(f"cannot load a tokenizer from {model_dir}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise BuildError(f"the tokenizer in {model_dir} is not a fast (tokenizers) tokenizer")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise BuildError(f"the tokenizer in {model_dir} has {len(tokenizer)} tokens but the model's vocabulary holds {vocab_size}")
    return tokenizer


def load_for_tracing(model_dir: Path, *, attn_implementation: str | None = None) -> Checkpoint:
    """Load a fine-tuned 2-label classifier of a known family for tracing (tuple output, eval mode); attention: the
    family's tracing kernel unless given."""
    config = read_config(model_dir)
    family = family_of(config, str(model_dir))
    architectures = config.get("architectures") or []
    if family.classifier not in architectures:
        raise BuildError(
            f"{model_dir} is not a {family.classifier} checkpoint (architectures: {architectures}); "
            "fine-tune it first with `python -m model_build finetune`"
        )
    num_labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    if num_labels != 2:
        raise BuildError(f"{model_dir} has {num_labels} labels; a paraphrase classifier needs exactly 2")
    tokenizer = load_tokenizer(model_dir, config.get("vocab_size"))
    model = _from_pretrained(model_dir, family, attn_implementation=attn_implementation or family.trace_attention)
    return Checkpoint(model_dir, model, tokenizer, config_hash(model_dir), family, bool(config.get(RANDOM_INIT_KEY)))


def load_base(model_dir: Path) -> Checkpoint:
    """Load any checkpoint of a known family with a (new, if absent) 2-way classification head, for fine-tuning with
    the family's training attention kernel."""
    config = read_config(model_dir)
    family = family_of(config, str(model_dir))
    tokenizer = load_tokenizer(model_dir, config.get("vocab_size"))
    model = _from_pretrained(model_dir, family, attn_implementation=family.train_attention, new_head_ok=True)
    return Checkpoint(model_dir, model, tokenizer, config_hash(model_dir), family)


def _from_pretrained(model_dir: Path, family: Family, *, attn_implementation: str, new_head_ok: bool = False) -> Any:
    try:
        model, info = family.classifier_class().from_pretrained(
            str(model_dir),
            num_labels=2,
            id2label=dict(enumerate(LABELS)),
            label2id={label: i for i, label in enumerate(LABELS)},
            # transformers 5 has no torchscript=True; return_dict=False gives the tuple a trace needs.
            return_dict=False,
            attn_implementation=attn_implementation,
            local_files_only=True,
            output_loading_info=True,
        )
    except Exception as exc:  # a missing or corrupt weights file surfaces as several exception types
        raise BuildError(f"cannot load {family.model_type} weights from {model_dir}: {exc}") from exc
    missing = [k for k in info.get("missing_keys", []) if k.startswith("classifier.")]
    if missing and not new_head_ok:
        raise BuildError(f"{model_dir} has no trained classification head (missing {', '.join(sorted(missing))})")
    model.eval()
    return model


def config_hash(model_dir: Path) -> str:
    """sha256 of the checkpoint's config.json, recorded in the manifest to name the source exactly."""
    return hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest()
