"""The tokenizer against transformers' BioGptTokenizer on the real BioGPT vocabularies."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from biogpt.errors import BioGPTError
from biogpt.tokenizer import Tokenizer
from biogpt.tokenizer import tokenizer as tokenizer_module

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VOCAB = DATA / "vocab" / "biogpt"

if not VOCAB.is_dir():
    pytest.skip(
        f"{DATA} not found: the shared data sits beside the repository", allow_module_level=True
    )
transformers = pytest.importorskip("transformers", reason="transformers is the test oracle")
pytest.importorskip("sacremoses", reason="transformers' BioGptTokenizer needs sacremoses")


def convert_to_hf(source: Path, target: Path) -> Path:
    """An independent conversion of fairseq dict.txt + bpecodes into vocab.json + merges.txt."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    with open(source / "dict.txt", encoding="utf-8") as f:
        for index, line in enumerate(f, start=4):
            piece = line.rstrip("\n").rsplit(" ", 1)[0]
            vocab[piece[:-2] if piece.endswith("@@") else piece + "</w>"] = index
    target.mkdir(parents=True, exist_ok=True)
    (target / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with open(source / "bpecodes", encoding="utf-8") as f:
        merges = "".join(" ".join(line.split()[:2]) + "\n" for line in f)
    (target / "merges.txt").write_text(merges, encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained("biogpt")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    path = convert_to_hf(VOCAB, tmp_path_factory.mktemp("hf-independent"))
    return transformers.BioGptTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))


@pytest.fixture(scope="module")
def hf_from_ours(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf-ours")
    tok.save_pretrained(path, format="hf")
    return transformers.BioGptTokenizer.from_pretrained(str(path))


def hf_ids(hf, text: str, pair: str | None = None) -> list[int]:
    return hf(text, pair)["input_ids"] if pair is not None else hf(text)["input_ids"]


def abstracts() -> list[str]:
    with open(DATA / "pretrain" / "abstracts.jsonl", encoding="utf-8") as f:
        return [(d := json.loads(line))["title"] + " " + d["abstract"] for line in f]


def sentences() -> list[str]:
    files = sorted(glob.glob(str(DATA / "pretrain" / "sentences" / "*.txt")))
    return [line.rstrip("\n") for name in files for line in open(name, encoding="utf-8")]


# ------------------------------------------------------------------------------------------
# Reference ids and the data
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("COVID-19 is", [2, 4805, 9, 656, 21]),
        ("Hello, my dog is a little", [2, 313, 3666, 399, 7, 10241, 4316, 21, 14, 1161]),
        ("Today, I", [2, 18538, 7, 174]),
    ],
)
def test_reference_ids(tok: Tokenizer, text: str, ids: list[int]) -> None:
    assert tok.encode(text) == ids


def test_sizes_and_special_ids(tok: Tokenizer) -> None:
    assert len(tok) == 42384
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.id_to_token(2) == "</s>" and tok.token_to_id("</s>") == 2
    assert tok.token_to_id("no-such-piece") == tok.unk_id
    assert len(Tokenizer.from_pretrained("biogpt-large")) == 57717


def compare_ids(tok, hf, texts: list[str]) -> None:
    mismatches = [t for t in texts if tok.encode(t) != hf_ids(hf, t)]
    assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[0]!r}"


# The full comparison takes about 40 s (the reference's time), so it runs by default.
def test_all_abstracts(tok, hf) -> None:
    compare_ids(tok, hf, abstracts())


def test_all_sentences(tok, hf) -> None:
    compare_ids(tok, hf, sentences())


def test_hf_files_written_by_us_give_the_same_ids(tok, hf_from_ours) -> None:
    compare_ids(tok, hf_from_ours, abstracts()[5::50])


def test_decode_sample(tok, hf) -> None:
    for text in abstracts()[::97]:
        ids = tok.encode(text)
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
        assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids)


def test_pairs(tok, hf) -> None:
    a, b = "What is the dose?", "The dose was 5 mg/kg."
    assert (
        tok.encode(a, pair=b) == hf_ids(hf, a, b) == [2, *tok.encode(a)[1:], 2, *tok.encode(b)[1:]]
    )


# ------------------------------------------------------------------------------------------
# Tricky text
# ------------------------------------------------------------------------------------------

TRICKY = [
    "",
    " ",
    " \t\n ",
    "Ärzte behandeln Ödeme in Zürich; naïve café, façade, São Paulo.",
    "Ελληνικά και русский текст, עברית, العربية ١٢٣ and हिन्दी क्षत्रिय.",
    "Digits ٣٤ ۵۶ ௧௨ and ½ ⅷ ² superscripts.",
    "a-b c–d e—f g‒h i―j k‐l m‑n o−p q﹣r s－t",
    "--double -- dashes - and trailing- -leading",
    "'single' \"double\" `back` ‘curly’ “curly” «guillemets»",
    "don't can't won't it's O'Neil's 90's rock 'n' roll",
    "'' doubled '' quotes and a trailing quote'",
    "the dogs' bones and the boss' desk",
    "'tis 'twas",
    "[brackets] (parens) {braces} <angles>",
    "a|b || c",
    "A&B &amp; &lt;already&gt; escaped &#124; &quot;",
    "See https://example.org/path/to_file.html?x=1&y=2 now.",
    "Mail john.doe@example.com or @handle #tag.",
    "1,000.5 and 3.14 and -5 and +/- 2 and 10,000,000",
    "50% of 1.5e-3 mg/kg (p < 0.05, n = 12).",
    "Wait... what.... and .. or ...",
    "Multiple dots... at the end...",
    "Dr. Smith met Mr. Jones at St. Mary's.",
    "Fig. 3 shows it; see Fig. 3A and Figs. 4-5.",
    "No. 5 and No. x and No. X and Art. 12 and pp. 34-56.",
    "cats vs. dogs and A vs. B",
    "et al. showed that et al. Showed",
    "i.e. the point, e.g. this one",
    "see p. 5 and P. 6",
    "apples, pears, etc.",
    "It was in 2019,",
    "U.S.A. and U.K. politics.",
    "Sentence one. Sentence two! Question? Exclamation!",
    "a\x00b\x01c\x02 d\x1fe\x7ff",
    "\x01 'quoted' \x02",
    "tab\tseparated\nnew\r\nline\x0bvertical\x0cform",
    "non\xa0breaking\u2009thin\u3000ideographic",
    "zero\u200bwidth\u200cjoin\u200dand\ufefffeff",
    "emoji 😀🧬💊 and flags 🇩🇪",
    "中文句子，包括标点。日本語の文章です。한국어 문장입니다.",
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 5,
    "x" * 300,
    "α-synuclein and β-amyloid (Aβ42) with TNF-α.",
    "IL-6/IL-8 and/or CD4+/CD8+ T-cells",
    "5'-UTR and 3' end of the 5'-3' strand",
    "1' '2 and x' 'y",
    "H2O2, CO2, Na+/K+-ATPase",
    "COVID-19, SARS-CoV-2 and MERS-CoV.",
    "~10 mg ± 2 × 3 ÷ 4 ≥ 5 ≤ 6 ≈ 7 → 8",
    "$100, €50, £20, ¥1000 and 5¢",
    "semi;colon:colon a/b a\\b",
    "#hash @at ^caret *star =eq _under_",
    "DOTMULTI and DOTDOTMULTI literal",
    "ends with dot-quote.'",
    'He said, "It works."',
    "(Fig. 1).",
    "A. B. C.",
    "a. b. c.",
    "v. 2 and vs. 3",
    "mid-2019, pre- and post-treatment",
    "Smith et al., 2020; Jones et al. (2021).",
    "<s> and </s> and <unk> and <pad> inside text",
    "x</s>y",
    "Title: subtitle — with em dash",
    "Ⅻ ⓐ ⅰ",
    "ǅemal ǈ",
    "ſ long s and ﬁ ligature",
]


def test_there_are_enough_tricky_cases() -> None:
    assert len(TRICKY) >= 60


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_ids_and_decode(tok, hf, text: str) -> None:
    ids = tok.encode(text)
    assert ids == hf_ids(hf, text)
    assert tok.tokenize(text) == hf.tokenize(text)
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids)


def test_decode_of_any_ids(tok, hf) -> None:
    # Arbitrary id sequences, unknown ids included, decode like the reference.
    ids = [5, 0, 17, 1, 2, 3, 999, 42383, 42384, 100000, 12, 7, 9, 9, 656]
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids)


# ------------------------------------------------------------------------------------------
# Files: formats, round trips, errors
# ------------------------------------------------------------------------------------------


def test_fairseq_and_hf_files_give_the_same_tokenizer(tok, tmp_path) -> None:
    from_hf = Tokenizer.from_pretrained(convert_to_hf(VOCAB, tmp_path / "hf"))
    from_fairseq = Tokenizer.from_pretrained(VOCAB)
    assert from_hf.vocab.pieces == from_fairseq.vocab.pieces == tok.vocab.pieces
    assert from_hf.vocab.merges == from_fairseq.vocab.merges == tok.vocab.merges
    text = abstracts()[0]
    assert from_hf.encode(text) == from_fairseq.encode(text) == tok.encode(text)


@pytest.mark.parametrize("fmt", ["hf", "fairseq", "both"])
def test_save_load_round_trip(tok, tmp_path, fmt: str) -> None:
    tok.save_pretrained(tmp_path, format=fmt)
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.vocab.pieces == tok.vocab.pieces and again.vocab.merges == tok.vocab.merges
    if fmt != "hf":
        for name in ("dict.txt", "bpecodes"):
            assert (tmp_path / name).read_bytes() == (VOCAB / name).read_bytes()


def test_biogpt_large_matches_hf(tmp_path) -> None:
    large = Tokenizer.from_pretrained("biogpt-large")
    path = convert_to_hf(DATA / "vocab" / "biogpt-large", tmp_path)
    hf_large = transformers.BioGptTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    compare_ids(large, hf_large, abstracts()[3::200] + TRICKY)


def test_bundled_vocabularies_are_the_released_ones() -> None:
    bundled = Path(tokenizer_module.BUNDLED)
    for name in ("biogpt", "biogpt-large"):
        for file in ("dict.txt", "bpecodes"):
            released = DATA / "vocab" / name / file
            assert (bundled / name / file).read_bytes() == released.read_bytes()
        assert "MIT License" in (bundled / name / "NOTICE").read_text()


def test_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(BioGPTError, match="no vocabulary found"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(BioGPTError, match="not a directory"):
        Tokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "dict.txt").write_text("the 10\nof\n", encoding="utf-8")
    (tmp_path / "bpecodes").write_text("t h 5\n", encoding="utf-8")
    with pytest.raises(BioGPTError, match=r"dict\.txt:2: expected 'piece count'"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "dict.txt").write_text("the 10\nthe 3\n", encoding="utf-8")
    with pytest.raises(BioGPTError, match=r"dict\.txt:2: piece 'the' is listed twice"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "dict.txt").write_text("the 10\n", encoding="utf-8")
    (tmp_path / "bpecodes").write_text("t h 5\nth\n", encoding="utf-8")
    with pytest.raises(BioGPTError, match=r"bpecodes:2: expected 'left right count'"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "bpecodes").write_bytes(b"t h 5\n\xff\xfe\n")
    with pytest.raises(BioGPTError, match=r"bpecodes: cannot be read"):
        Tokenizer.from_pretrained(tmp_path)

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "merges.txt").write_text("t h\n", encoding="utf-8")
    (hf_dir / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BioGPTError, match=r"vocab\.json: cannot be read as JSON"):
        Tokenizer.from_pretrained(hf_dir)
    (hf_dir / "vocab.json").write_text(
        '{"<s>": 0, "<pad>": 1, "</s>": 2, "x": 3}', encoding="utf-8"
    )
    with pytest.raises(BioGPTError, match=r"ids 0-3 must be"):
        Tokenizer.from_pretrained(hf_dir)
    with pytest.raises(BioGPTError, match="format"):
        Tokenizer.from_pretrained("biogpt").save_pretrained(tmp_path / "out", format="onnx")


# ------------------------------------------------------------------------------------------
# Added tokens and batches
# ------------------------------------------------------------------------------------------

ADDED_TEXTS = [
    "learned1 learned2 learned3 The drug interacts with the protein.",
    "xlearned1y and learned10 and learned1.",
    "learned9</s>learned1",
    "no prompt tokens here",
]


def test_add_tokens_like_hf(tmp_path) -> None:
    ours = Tokenizer.from_pretrained("biogpt")
    path = convert_to_hf(VOCAB, tmp_path / "ref")
    ref = transformers.BioGptTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    names = [f"learned{i}" for i in range(1, 11)]
    ids = ours.add_tokens(names)
    assert ids == list(range(42384, 42394))
    assert ref.add_tokens(names) == 10
    assert ours.add_tokens(["learned1"]) == [42384]  # adding again changes nothing
    assert len(ours) == len(ref) == 42394
    assert ours.encode("learned1") == [2, 42384]
    for text in ADDED_TEXTS:
        assert ours.encode(text) == hf_ids(ref, text)
        encoded = ours.encode(text)
        assert ours.decode(encoded) == ref.decode(encoded, skip_special_tokens=True)
        assert ours.decode(encoded, skip_special_tokens=False) == ref.decode(encoded)

    # Saved, the added tokens survive both formats and transformers reads them.
    ours.save_pretrained(tmp_path / "saved", format="both")
    reloaded = Tokenizer.from_pretrained(tmp_path / "saved")
    hf_reloaded = transformers.BioGptTokenizer.from_pretrained(str(tmp_path / "saved"))
    for text in ADDED_TEXTS:
        assert reloaded.encode(text) == ours.encode(text) == hf_ids(hf_reloaded, text)
    with pytest.raises(BioGPTError, match="already a vocabulary piece"):
        ours.add_tokens(["the</w>"])


def test_encode_batch(tok, monkeypatch) -> None:
    texts = abstracts()[:300] + TRICKY
    expected = [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts) == expected  # small: in this process
    monkeypatch.setattr(tokenizer_module, "PARALLEL_MIN_CHARS", 0)
    fresh = Tokenizer.from_pretrained("biogpt")  # empty caches in the workers
    assert fresh.encode_batch(texts, num_workers=2) == expected
    assert fresh.encode_batch([], num_workers=2) == []
