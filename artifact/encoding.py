"""Pair tokenization, padding, and turning logits into answers: shared by the build checks, the evaluator and the service.

Uses the `tokenizers` library directly on the artifact's tokenizer.json, so serving needs no transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

LABELS = ("not_paraphrase", "paraphrase")  # logit index 1 = paraphrase, as in GLUE MRPC
DECISION_THRESHOLD = 0.5  # P(paraphrase) at or above it is labelled paraphrase


# Code points a BERT uncased tokenizer turns into nothing (whitespace, controls, format characters, combining
# marks its accent stripping removes, noncharacters, private use planes): a sentence made only of these reaches the
# model as no tokens. Derived from all-MiniLM-L6-v2's tokenizer.json over every code point; a test re-derives it.
SILENT_RANGES = """
0-20 7F-A0 AD 300-36F 483-487 591-5BD 5BF 5C1-5C2 5C4-5C5 5C7 600-605 610-61A 61C 64B-65F 670 6D6-6DD 6DF-6E4
6E7-6E8 6EA-6ED 70F 711 730-74A 7A6-7B0 7EB-7F3 816-819 81B-823 825-827 829-82D 859-85B 8E3-902 93A 93C
941-948 94D 951-957 962-963 981 9BC 9C1-9C4 9CD 9E2-9E3 A01-A02 A3C A41-A42 A47-A48 A4B-A4D A51 A70-A71 A75
A81-A82 ABC AC1-AC5 AC7-AC8 ACD AE2-AE3 B01 B3C B3F B41-B44 B4D B56 B62-B63 B82 BC0 BCD C00 C3E-C40 C46-C48
C4A-C4D C55-C56 C62-C63 C81 CBC CBF CC6 CCC-CCD CE2-CE3 D01 D41-D44 D4D D62-D63 DCA DD2-DD4 DD6 E31 E34-E3A
E47-E4E EB1 EB4-EB9 EBB-EBC EC8-ECD F18-F19 F35 F37 F39 F71-F7E F80-F84 F86-F87 F8D-F97 F99-FBC FC6 102D-1030
1032-1037 1039-103A 103D-103E 1058-1059 105E-1060 1071-1074 1082 1085-1086 108D 109D 135D-135F 1680 1712-1714
1732-1734 1752-1753 1772-1773 17B4-17B5 17B7-17BD 17C6 17C9-17D3 17DD 180B-180E 18A9 1920-1922 1927-1928 1932
1939-193B 1A17-1A18 1A1B 1A56 1A58-1A5E 1A60 1A62 1A65-1A6C 1A73-1A7C 1A7F 1AB0-1ABD 1B00-1B03 1B34 1B36-1B3A
1B3C 1B42 1B6B-1B73 1B80-1B81 1BA2-1BA5 1BA8-1BA9 1BAB-1BAD 1BE6 1BE8-1BE9 1BED 1BEF-1BF1 1C2C-1C33 1C36-1C37
1CD0-1CD2 1CD4-1CE0 1CE2-1CE8 1CED 1CF4 1CF8-1CF9 1DC0-1DF5 1DFC-1DFF 2000-200F 2028-202F 205F-2064 2066-206F
20D0-20DC 20E1 20E5-20F0 2CEF-2CF1 2D7F 2DE0-2DFF 3000 302A-302D 3099-309A A66F A674-A67D A69E-A69F A6F0-A6F1
A802 A806 A80B A825-A826 A8C4 A8E0-A8F1 A926-A92D A947-A951 A980-A982 A9B3 A9B6-A9B9 A9BC A9E5 AA29-AA2E
AA31-AA32 AA35-AA36 AA43 AA4C AA7C AAB0 AAB2-AAB4 AAB7-AAB8 AABE-AABF AAC1 AAEC-AAED AAF6 ABE5 ABE8 ABED
E000-F8FF FB1E FE00-FE0F FE20-FE2F FEFF FFF9-FFFB FFFD 101FD 102E0 10376-1037A 10A01-10A03 10A05-10A06
10A0C-10A0F 10A38-10A3A 10A3F 10AE5-10AE6 11001 11038-11046 1107F-11081 110B3-110B6 110B9-110BA 110BD
11100-11102 11127-1112B 1112D-11134 11173 11180-11181 111B6-111BE 111CA-111CC 1122F-11231 11234 11236-11237
112DF 112E3-112EA 11300-11301 1133C 11340 11366-1136C 11370-11374 114B3-114B8 114BA 114BF-114C0 114C2-114C3
115B2-115B5 115BC-115BD 115BF-115C0 115DC-115DD 11633-1163A 1163D 1163F-11640 116AB 116AD 116B0-116B5 116B7
1171D-1171F 11722-11725 11727-1172B 16AF0-16AF4 16B30-16B36 16F8F-16F92 1BC9D-1BC9E 1BCA0-1BCA3 1D167-1D169
1D173-1D182 1D185-1D18B 1D1AA-1D1AD 1D242-1D244 1DA00-1DA36 1DA3B-1DA6C 1DA75 1DA84 1DA9B-1DA9F 1DAA1-1DAAF
1E8D0-1E8D6 E0001 E0020-E007F E0100-E01EF F0000-FFFFD 100000-10FFFD
"""


def silent_ranges() -> list[tuple[int, int]]:
    """SILENT_RANGES as (first, last) code points."""
    out = []
    for item in SILENT_RANGES.split():
        first, _, last = item.partition("-")
        out.append((int(first, 16), int(last or first, 16)))
    return out


def visible_pattern() -> str:
    """A regex (Python, Rust and ECMA-262 alike) that matches a character the tokenizer keeps."""

    def char(c: int) -> str:
        return f"\\u{c:04x}" if c <= 0xFFFF else chr(c)

    return "[^" + "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in silent_ranges()) + "]"


def label_for(score: float, threshold: float = DECISION_THRESHOLD) -> str:
    """The label of a P(paraphrase) score."""
    return LABELS[1] if score >= threshold else LABELS[0]


@dataclass(frozen=True)
class EncodedPair:
    """Token ids and segment ids of one pair row as the tokenizer's template lays it out (`[CLS] a [SEP] b [SEP]` for
    BERT, `<s> a </s></s> b </s>` for MPNet), unpadded; `sentence_tokens` counts each sentence's own tokens after
    truncation (0 for a sentence that tokenizes to nothing); `truncated` when tokens were cut."""

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...]
    sentence_tokens: tuple[int, int]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


def longest_first(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """How many tokens of each sentence the tokenizers library's `longest_first` pair truncation keeps.

    Its rule (tokenizers 0.2x, `truncate_encodings`): a shorter sentence that fits in half the budget is kept whole
    and the other fills the rest; otherwise both get half, the longer one the odd token (the second on a tie).
    Checked against the library itself at every PairEncoder construction and in tests.
    """
    if n1 + n2 <= budget:
        return n1, n2
    swap = n1 > n2
    short, long = (n2, n1) if swap else (n1, n2)
    long = short if short > budget else max(short, budget - short)
    if short + long > budget:
        short = budget // 2
        long = short + budget % 2
    return (long, short) if swap else (short, long)


@dataclass(frozen=True)
class PairTemplate:
    """Where a tokenizer's post-processor puts its special tokens around a pair, and their segment ids: read off the
    library's own encoding of a probe pair, so any template (BERT's, RoBERTa's as MPNet uses it) is assembled alike."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    types: tuple[tuple[int, ...], int, tuple[int, ...], int, tuple[int, ...]]  # prefix, first, middle, second, suffix

    @property
    def specials(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    @classmethod
    def read(cls, tokenizer: Tokenizer) -> PairTemplate | None:
        """The template of `tokenizer` (no truncation, no padding), or None when a probe pair is not laid out as
        specials, first sentence, specials, second sentence, specials."""
        e = tokenizer.encode("a", "b")
        seq = list(e.sequence_ids)
        if seq.count(0) != 1 or seq.count(1) != 1 or seq.index(0) > seq.index(1):
            return None
        i, j = seq.index(0), seq.index(1)
        ids, types = list(e.ids), list(e.type_ids)
        if any(s is not None for s in seq[:i] + seq[i + 1 : j] + seq[j + 1 :]):
            return None
        return cls(
            tuple(ids[:i]),
            tuple(ids[i + 1 : j]),
            tuple(ids[j + 1 :]),
            (tuple(types[:i]), types[i], tuple(types[i + 1 : j]), types[j], tuple(types[j + 1 :])),
        )

    def assemble(self, first: Sequence[int], second: Sequence[int], max_length: int) -> EncodedPair:
        """The row the library would give for these two sentences' token ids, cut `longest_first` to max_length."""
        k1, k2 = longest_first(len(first), len(second), max_length - self.specials)
        t_pre, t_first, t_mid, t_second, t_suf = self.types
        ids = (*self.prefix, *first[:k1], *self.middle, *second[:k2], *self.suffix)
        types = (*t_pre, *(t_first,) * k1, *t_mid, *(t_second,) * k2, *t_suf)
        return EncodedPair(ids, types, (k1, k2), truncated=(k1, k2) != (len(first), len(second)))


class PairEncoder:
    """A fast tokenizer set to `longest_first` truncation at `max_length`, without padding, at a bounded cost.

    The tokenizers library truncates a pair by first cutting both sequences into overflow windows: one pair of
    2,000 '.' characters each built 1,055 windows and took 260 ms, and 64 such pairs held 4 GB. A pair with a
    sentence longer than max_length characters is therefore tokenized one sentence at a time, without truncation
    (linear: 2-3 ms for 2,000 characters), and cut and assembled here by the library's own rule (`longest_first`)
    into the tokenizer's pair template (`PairTemplate`): the same ids, checked against the library when the encoder
    is made.
    """

    def __init__(self, tokenizer_file: Path, max_length: int) -> None:
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._single = Tokenizer.from_file(str(tokenizer_file))
        self._single.no_padding()
        self._single.no_truncation()
        self.template = PairTemplate.read(self._single)
        self._tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
        if self.template is not None and (self.template.specials >= max_length or not self._agrees_with_the_library()):
            self.template = None  # a template this rule cannot reproduce: always use the library (no known case here)

    def _agrees_with_the_library(self) -> bool:
        probes = [("a " * n1, "b " * n2) for n1 in (0, 3, 60, 70, 130) for n2 in (0, 2, 61, 64, 65, 200)]
        return all(self._assemble(a, b) == self._library(a, b) for a, b in probes)

    def _library(self, a: str, b: str) -> EncodedPair:
        return row_of(self._tokenizer.encode(a, b))

    def _assemble(self, a: str, b: str) -> EncodedPair:
        assert self.template is not None
        first, second = self._single.encode_batch([a, b], add_special_tokens=False)
        return self.template.assemble(first.ids, second.ids, self.max_length)

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[EncodedPair]:
        """Tokenize each (sentence1, sentence2) as one pair row."""
        if self.template is None:
            return [self._library(a, b) for a, b in pairs]
        long = [max(len(a), len(b)) > self.max_length for a, b in pairs]
        short = iter(self._tokenizer.encode_batch([pair for pair, is_long in zip(pairs, long, strict=True) if not is_long]))
        return [self._assemble(a, b) if is_long else row_of(next(short)) for (a, b), is_long in zip(pairs, long, strict=True)]


def row_of(e: Any) -> EncodedPair:
    """The row of one tokenizers `Encoding` (or a transformers fast tokenizer's `.encodings[i]`)."""
    sequences = list(e.sequence_ids)
    counts = (sequences.count(0), sequences.count(1))
    return EncodedPair(tuple(e.ids), tuple(e.type_ids), counts, truncated=bool(e.overflowing))


# The inputs a BERT's forward takes, in its signature's order; other families take fewer (MPNet: no token types).
BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class InputSpec:
    """What a model's forward takes: its input names in signature order, and the tokenizer's padding id."""

    names: tuple[str, ...] = BERT_INPUTS
    pad_id: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.names) - set(BERT_INPUTS)
        if unknown or self.names[:2] != BERT_INPUTS[:2]:
            raise ValueError(f"model inputs {self.names} are not input_ids, attention_mask[, token_type_ids]")


BERT_SPEC = InputSpec()


@dataclass(frozen=True)
class PaddedBatch:
    """A batch's model inputs, padded, in its model's argument order (`spec.names`)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    rows: int  # real rows; the rest is padding
    real_tokens: int
    spec: InputSpec = BERT_SPEC

    def args(self) -> tuple[torch.Tensor, ...]:
        """The positional arguments of the traced module, in its forward signature's order."""
        return tuple(getattr(self, name) for name in self.spec.names)

    def kwargs(self) -> dict[str, torch.Tensor]:
        """The same inputs by name (the eager model's keyword arguments, OpenVINO's input names)."""
        return {name: getattr(self, name) for name in self.spec.names}

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.numel())


def pad_batch(rows: Sequence[EncodedPair], batch_size: int, seq_len: int, spec: InputSpec) -> PaddedBatch:
    """Pad rows and columns (the tokenizer's padding id, masked out) to exactly batch_size x seq_len."""
    if not 0 < len(rows) <= batch_size:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {batch_size}")
    ids = torch.full((batch_size, seq_len), spec.pad_id, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    real = 0
    for i, row in enumerate(rows):
        n = len(row)
        if n > seq_len:
            raise ValueError(f"row {i} has {n} tokens; the shape holds {seq_len}")
        ids[i, :n] = torch.tensor(row.input_ids, dtype=torch.long)
        types[i, :n] = torch.tensor(row.token_type_ids, dtype=torch.long)
        mask[i, :n] = 1
        real += n
    return PaddedBatch(ids, mask, types, len(rows), real, spec)


def paraphrase_scores(logits: torch.Tensor) -> list[float]:
    """P(paraphrase) per row: softmax over the two logits, index 1."""
    return torch.softmax(logits.float(), dim=-1)[:, 1].tolist()
