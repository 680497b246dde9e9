"""Model families by config.json's `model_type`: how the build loads, fine-tunes, traces and quantizes each kind.

A family is one entry of FAMILIES; nothing else in the build (or anywhere in the service) names a family. The
service needs none of this: an artifact carries its tokenizer, its input names and its padding id (the manifest),
so a new family costs an entry here, not a branch in the core. `register` adds one (tests register a stand-in).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from artifact.encoding import BERT_INPUTS, InputSpec
from model_build.errors import BuildError


@dataclass(frozen=True)
class Family:
    """One kind of checkpoint: its transformers classes, what its forward takes and how it is trained and traced."""

    model_type: str  # config.json's model_type
    classifier: str  # the transformers sequence-classification class; saved checkpoints name it in `architectures`
    config_class: str  # the transformers config class (tiny random checkpoints are built from it)
    input_names: tuple[str, ...]  # the forward's tensor arguments, in signature order
    # Attention kernels: training takes the fastest the family supports; tracing takes eager (its graph quantizes
    # like the tutorial's and converts to OpenVINO without custom ops).
    train_attention: str = "sdpa"
    trace_attention: str = "eager"
    # Parameters excluded from weight decay (AdamW), by name suffix.
    no_decay: tuple[str, ...] = ("bias", "LayerNorm.weight")
    # Each layer's feed-forward output projection (intermediate -> hidden), a regular expression on the module name:
    # the Linears whose inputs, after GELU, carry the activation outliers that cost int8 its answers (docs/model.md).
    ffn_output: str = r"layer\.\d+\.output\.dense$"
    # Tiny random checkpoints (tests, CI) take MiniLM's uncased vocabulary: this lays its tokenizer out in the family's
    # pair template and padding (None: BERT's own, as it is).
    tiny_tokenizer: Callable[[Any], Any] | None = None

    def classifier_class(self) -> Any:
        import transformers

        return getattr(transformers, self.classifier)

    def input_spec(self, pad_id: int) -> InputSpec:
        return InputSpec(self.input_names, pad_id)

    def ffn_outputs(self, names: list[str]) -> list[str]:
        """Which of these Linear names are feed-forward output projections."""
        return [n for n in names if re.search(self.ffn_output, n)]


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add (or replace) a family; returns it."""
    FAMILIES[family.model_type] = family
    return family


def roberta_pair_template(tokenizer: Any) -> Any:
    """A BERT-vocabulary tokenizer laid out as MPNet's: `[CLS] a [SEP][SEP] b [SEP]`, no segment ids, and padding
    with id 1 (`[unused0]`), as MPNet's `<pad>` is 1: the tiny MPNet meets the real one's template and padding."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    cls, sep = tokenizer.cls_token, tokenizer.sep_token
    backend.post_processor = processors.RobertaProcessing(
        (sep, tokenizer.convert_tokens_to_ids(sep)), (cls, tokenizer.convert_tokens_to_ids(cls))
    )
    specials = {"cls_token": cls, "sep_token": sep, "unk_token": tokenizer.unk_token, "mask_token": tokenizer.mask_token}
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[unused0]", **specials)


# BERT (all-MiniLM-L6-v2, the default; the tutorial's bert-base-cased): segment ids say which sentence a token is in.
register(Family("bert", "BertForSequenceClassification", "BertConfig", BERT_INPUTS))
# MPNet (all-mpnet-base-v2, the accurate model): BERT-base's geometry with relative position attention, a RoBERTa
# pair template (`<s> a </s></s> b </s>`), no segment ids, padding id 1. transformers 5 has no sdpa kernel for it.
register(
    Family(
        "mpnet",
        "MPNetForSequenceClassification",
        "MPNetConfig",
        ("input_ids", "attention_mask"),
        train_attention="eager",
        tiny_tokenizer=roberta_pair_template,
    )
)


def family_of(config: dict[str, Any], where: str = "the checkpoint") -> Family:
    """The family of a config.json, or a BuildError naming the ones this build knows."""
    model_type = config.get("model_type")
    try:
        return FAMILIES[str(model_type)]
    except KeyError:
        raise BuildError(f"{where} holds a {model_type!r} model; paraserve builds {', '.join(sorted(FAMILIES))}") from None
