"""Pair tokenization: the library's ids at a bounded cost, and the characters that tokenize to nothing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from artifact.encoding import PairEncoder, longest_first, silent_ranges

WORDS = [
    "the",
    "cat",
    "unbelievable",
    "x" * 120,
    "漢字",
    "naïve",
    "...",
    "don't",
    "e\u0301t\u00e9",
    "\u200b",
    "supercalifragilistic",
    ",",
    "1,000",
]


@pytest.fixture(scope="module")
def tokenizer_file(tiny_artifacts: Path) -> Path:
    return tiny_artifacts / "fp32" / "tokenizer.json"


def library(tokenizer_file: Path, max_length: int) -> Tokenizer:
    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_padding()
    tok.enable_truncation(max_length, strategy="longest_first")
    return tok


@pytest.mark.parametrize("max_length", [128, 32])
def test_encodings_equal_the_librarys_longest_first_truncation(tokenizer_file: Path, max_length: int):
    encoder, reference = PairEncoder(tokenizer_file, max_length), library(tokenizer_file, max_length)
    rng = random.Random(7)
    for _ in range(600):
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 200)))
        b = "".join(rng.choice(WORDS) + rng.choice([" ", "", "  "]) for _ in range(rng.randint(0, 200)))
        (got,) = encoder.encode([(a, b)])
        want = reference.encode(a, b)
        assert (list(got.input_ids), list(got.token_type_ids), got.truncated) == (want.ids, want.type_ids, bool(want.overflowing))


def test_the_truncating_library_path_never_sees_a_long_sentence(tokenizer_file: Path, monkeypatch: pytest.MonkeyPatch):
    """Its overflow windows made one pair of 2,000 dots cost 260 ms and 64 of them 4 GB: long pairs are assembled here."""
    encoder = PairEncoder(tokenizer_file, 128)
    seen: list[int] = []
    original = encoder._tokenizer.encode_batch
    monkeypatch.setattr(encoder._tokenizer, "encode_batch", lambda pairs: seen.extend(len(t) for p in pairs for t in p) or original(pairs))
    rows = encoder.encode([("." * 2000, "." * 2000), ("漢" * 2000, "a cat"), ("a cat", "a dog")])
    assert max(seen) <= 128
    assert [len(r) for r in rows] == [128, 128, 7] and [r.truncated for r in rows] == [True, True, False]
    assert rows[0] == encoder._library("." * 2000, "." * 2000)  # the same ids the library gives, at its cost


def test_longest_first_keeps_a_short_sentence_whole_and_splits_two_long_ones():
    assert longest_first(10, 10, 125) == (10, 10)
    assert longest_first(10, 500, 125) == (10, 115) and longest_first(500, 10, 125) == (115, 10)
    assert longest_first(300, 200, 125) == (63, 62) and longest_first(200, 300, 125) == (62, 63)
    assert longest_first(200, 200, 125) == (62, 63)  # a tie: the second gets the odd token


def test_sentence_token_counts_come_from_the_tokenizers_sequence_ids(tokenizer_file: Path):
    encoder = PairEncoder(tokenizer_file, 128)
    assert encoder.encode([("a cat", "dog")])[0].sentence_tokens == (2, 1)
    assert encoder.encode([("\u200b", "dog")])[0].sentence_tokens == (0, 1)
    assert encoder._assemble("a cat", "dog").sentence_tokens == (2, 1)


def test_silent_ranges_are_exactly_the_characters_that_tokenize_to_nothing(tokenizer_file: Path):
    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_padding()
    tok.no_truncation()
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    silent = set()
    for start in range(0, len(code_points), 20000):
        chunk = code_points[start : start + 20000]
        silent |= {c for c, e in zip(chunk, tok.encode_batch([chr(c) for c in chunk], add_special_tokens=False), strict=True) if not e.ids}
    assert silent == {c for a, b in silent_ranges() for c in range(a, b + 1) if not 0xD800 <= c <= 0xDFFF}
