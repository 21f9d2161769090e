"""Our Moses rules against sacremoses, the implementation transformers' BioGptTokenizer uses."""

from __future__ import annotations

import random
import re

import pytest

from biogpt.tokenizer import moses

sacremoses = pytest.importorskip("sacremoses", reason="sacremoses is the test oracle")
from sacremoses.corpus import Perluniprops  # noqa: E402
from sacremoses.indic import NUKTAS, VIRAMAS  # noqa: E402
from sacremoses.util import is_cjk  # noqa: E402

REF = sacremoses.MosesTokenizer("en")
REF_DETOK = sacremoses.MosesDetokenizer("en")


def reference(text: str) -> list[str]:
    return REF.tokenize(text, aggressive_dash_splits=True, escape=True)


def members(pattern: str) -> set[str]:
    """Every code point matched by the character class `[pattern]`."""
    regex = re.compile(f"[{pattern}]")
    return {chr(c) for c in range(0x110000) if regex.match(chr(c))}


def test_character_classes_match_the_reference_tables() -> None:
    tables = Perluniprops()
    signs = set(VIRAMAS) | set(NUKTAS)
    assert members(moses.ALNUM) == set(tables.chars("IsAlnum")) | signs
    assert members(moses.ALPHA) == set(tables.chars("IsAlpha")) | signs
    assert members(moses.NUMBER) == set(tables.chars("IsN"))
    assert set(moses.ALPHA_CHARS) == set(tables.chars("IsAlpha")) | signs
    assert set(moses.LOWER_CHARS) == set(tables.chars("IsLower"))
    assert {c for c in map(chr, range(0x110000)) if is_cjk(c)} == members(
        moses.CJK_CHAR.pattern[1:-1]
    )


def test_whitespace_regex_and_str_split_agree() -> None:
    # The cached path splits with str.split(), the reference collapses `\s+`.
    spaces = {chr(c) for c in range(0x110000) if moses.WHITESPACE.match(chr(c))}
    assert spaces == {chr(c) for c in range(0x110000) if chr(c).isspace()}


def test_nonbreaking_prefixes_match_the_reference() -> None:
    plain = {p for p in REF.NONBREAKING_PREFIXES if "#NUMERIC_ONLY#" not in p}
    assert plain == moses.NONBREAKING_PREFIXES
    assert set(REF.NUMERIC_ONLY_PREFIXES) == moses.NUMERIC_ONLY_PREFIXES


# Pieces chosen to hit every rule and the boundaries between words.
PIECES = [
    *"aB5,.'\"`-()[]{}<>&|@#%$;:?!/\\+=*~^_",
    "..", "...", "''", "--", "1,000", "3.14", "Dr.", "No.", "No", "pp.", "Art.", "e.g.",
    "i.e.", "U.S.", "x.", "Fig.", "al.", "etc.", "'s", "n't", "don't", "dogs'", "'tis", "90's",
    "O'Neil", "5'", "'2", "2019,", "é", "ß", "Ω", "٣", "中文", "x-y", "-5", "+/-", "\u2013",
    "\u2014", "\u2212", "\u2010", "“", "”", "‘", "’", "«", "»", "\xa0", "\u200b", "\t", "\n",
    "\x01", "\x7f", "\x1c", "DOTMULTI", "DOTDOTMULTI", "http://x.org/a_b", "a@b.com", "कि",
    "्", "😀", "ǅ", "ⅷ", "½", "&amp;", "&#124;", "a.b.", "I.", "v.", "Nos.",
]  # fmt: skip
SEPARATORS = [" ", " ", " ", "", "  ", "\n", "\x01 ", " \x02 "]


def random_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        parts = [rng.choice(PIECES) + rng.choice(SEPARATORS) for _ in range(rng.randint(0, 9))]
        text = "".join(parts)
        texts.append(text.strip() if rng.random() < 0.3 else text)
    return texts


@pytest.mark.parametrize("seed", range(3))
def test_random_texts_tokenize_like_the_reference(seed: int) -> None:
    cached = moses.MosesTokenizer()
    for text in random_texts(seed, 4000):
        expected = reference(text)
        assert moses.tokenize_exact(text) == expected, text
        assert cached.tokenize(text) == expected, text


@pytest.mark.parametrize("seed", range(2))
def test_random_texts_detokenize_like_the_reference(seed: int) -> None:
    for text in random_texts(100 + seed, 3000):
        tokens = reference(text)
        assert moses.detokenize(tokens) == REF_DETOK.detokenize(tokens), tokens


@pytest.mark.parametrize(
    "text",
    [
        "1' '2",  # the quote rule consumes the space the next word's quote needs
        "x 1' '2 y",
        "1' \x01 '2",  # two spaces left behind by a control character: no conflict
        "'hello",  # a leading quote has nothing before it
        "dogs'",  # a final quote has nothing after it
        "No. 5 and No. x and No. A",
        "He said.' Then",
        "ends with.'",
        "in 2019,",
        "..abc ..",
        "a DOTDOTMULTI b",
    ],
)
def test_context_cases(text: str) -> None:
    assert moses.MosesTokenizer().tokenize(text) == reference(text)
    assert moses.tokenize_exact(text) == reference(text)


def test_word_analysis_flags() -> None:
    assert moses.analyse_word("1'", False, False).tail_quote
    assert moses.analyse_word("'2", False, False).head_quote
    form = moses.analyse_word("Fig.", False, False)
    assert form.tokens == ["Fig."] and form.split == ["Fig", "."]
    assert moses.analyse_word("No.", False, False).numeric_only
    assert moses.analyse_word("Dr.", False, False).split is None  # always an abbreviation
