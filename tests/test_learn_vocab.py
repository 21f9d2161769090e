"""BPE vocabulary learning: merges checked by hand, file layout, round trip."""

from __future__ import annotations

import json
from itertools import islice

import pytest
from shared_data import DATA

from biogpt.tokenizer import Tokenizer
from biogpt.tokenizer.learn import count_words, learn_merges, learn_vocabulary


def test_first_merges_by_hand():
    # Words: "ab" x3 -> a b</w>; "abc" x1 -> a b c</w>.
    # Pairs: (a, b</w>) 3, (a, b) 1, (b, c</w>) 1 -> first merge (a, b</w>) with count 3.
    # Then (a, b) and (b, c</w>) tie at 1: the smaller pair (a, b) wins, then (ab, c</w>).
    merges = learn_merges({"ab": 3, "abc": 1}, 10, min_count=1)
    assert merges == [(("a", "b</w>"), 3), (("a", "b"), 1), (("ab", "c</w>"), 1)]
    # min_count=2 stops after the only pair seen twice.
    assert learn_merges({"ab": 3, "abc": 1}, 10, min_count=2) == [(("a", "b</w>"), 3)]


def test_overlapping_pair_glued_left_to_right():
    # "aaa" x2 -> a a a</w>: (a, a) 2 and (a, a</w>) 2 tie; (a, a) wins and glues the left
    # pair: aa a</w>, leaving (aa, a</w>) 2.
    assert learn_merges({"aaa": 2}, 5, min_count=1) == [
        (("a", "a"), 2),
        (("aa", "a</w>"), 2),
    ]


def test_counts_follow_earlier_merges():
    # "the" x5, "then" x2: (t, h) 7, (h, e</w>) 5, (h, e) 2, (e, n</w>) 2.
    merges = learn_merges({"the": 5, "then": 2}, 3)
    assert merges[0] == (("t", "h"), 7)
    # Now th e</w> x5 and th e n</w> x2: (th, e</w>) 5 beats (th, e) 2 and (e, n</w>) 2.
    assert merges[1] == (("th", "e</w>"), 5)
    assert merges[2] == (("e", "n</w>"), 2)  # tie with (th, e): "e" < "th"


def test_files_counts_and_padding(tmp_path):
    out = learn_vocabulary(["ab ab", "ab abc"], 10, tmp_path, min_count=2)
    assert (out / "bpecodes").read_text() == "a b</w> 3\n"
    # Pieces: ab</w> x3, and a b c</w> once each; sorted by count, then spelling. 4 special
    # ids + 4 pieces = 8: no padding needed.
    assert (out / "dict.txt").read_text() == "ab 3\na@@ 1\nb@@ 1\nc 1\n"

    out = learn_vocabulary(["ab ab", "ab abc"], 10, tmp_path / "two", min_count=1)
    # 4 + 2 pieces = 6 ids: padded with two count-0 entries to 8.
    assert (out / "dict.txt").read_text() == "ab 3\nabc 1\nmadeupword0000 0\nmadeupword0001 0\n"
    tokenizer = Tokenizer.from_pretrained(out)
    assert len(tokenizer) == 8
    assert tokenizer.encode("abc ab") == [2, 5, 4]


def test_counts_are_moses_tokens():
    counts = count_words(["COVID-19 isn't <rare>."])
    assert counts == {
        "COVID": 1,
        "@-@": 1,
        "19": 1,
        "isn": 1,
        "&apos;t": 1,
        "&lt;": 1,
        "rare": 1,
        "&gt;": 1,
        ".": 1,
    }


def corpus() -> list[str]:
    path = DATA / "pretrain" / "abstracts.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in islice(f, 150):
            record = json.loads(line)
            texts.append(f"{record['title']} {record['abstract']}")
    return texts


def test_round_trip_on_abstracts(tmp_path):
    texts = corpus()
    out = learn_vocabulary(texts, 800, tmp_path)
    tokenizer = Tokenizer.from_pretrained(out)
    assert len(tokenizer) % 8 == 0
    assert len(tokenizer.vocab.merges) == 800
    reference = Tokenizer.from_pretrained("biogpt")
    for text in texts:
        ids = tokenizer.encode(text)
        assert tokenizer.unk_id not in ids
        # Decoding gives the Moses-detokenized text, the same as the released vocabulary's.
        assert tokenizer.decode(ids) == reference.decode(reference.encode(text))
    # Counts in dict.txt are non-increasing (padding last).
    counts = [int(line.split()[1]) for line in (out / "dict.txt").read_text().splitlines()]
    assert counts == sorted(counts, reverse=True)
