"""Corpus readers: MEDLINE XML edge cases, text and JSONL, the split and exclusion."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from shared_data import DATA

from biogpt.corpus.readers import (
    Document,
    evaluation_test_pmids,
    exclude,
    read_documents,
    read_jsonl,
    read_medline,
    read_pmid_list,
    read_text,
    split_of,
)
from biogpt.errors import BioGPTError


def citation(pmid: str, title: str, abstract: str = "", extra: str = "") -> str:
    body = f"<Abstract>{abstract}</Abstract>" if abstract else ""
    return (
        f"<PubmedArticle><MedlineCitation Status='MEDLINE'><PMID Version='1'>{pmid}</PMID>"
        f"<Article><ArticleTitle>{title}</ArticleTitle>{body}{extra}</Article>"
        # A nested PMID (comments/corrections) must not be taken for the record's own.
        f"<CommentsCorrectionsList><CommentsCorrections><PMID>999</PMID>"
        f"</CommentsCorrections></CommentsCorrectionsList></MedlineCitation>"
        f"<PubmedData/></PubmedArticle>"
    )


def medline(*records: str) -> str:
    return "<?xml version='1.0'?>\n<PubmedArticleSet>" + "".join(records) + "</PubmedArticleSet>"


BASELINE = medline(
    citation(
        "1",
        "Structured  study.",
        "<AbstractText Label='BACKGROUND' NlmCategory='BACKGROUND'>Why.</AbstractText>"
        "<AbstractText Label='RESULTS'>It <i>works</i> in H<sub>2</sub>O at 10<sup>-3</sup> M."
        "</AbstractText>",
    ),
    citation("2", "Title only."),
    citation("3", "", ""),  # empty: skipped
    citation("4", "", "<AbstractText>Abstract only.</AbstractText>"),
    citation("5", "", "", extra="<VernacularTitle>Titre.</VernacularTitle>"),
    citation("6", "Old version.", "<AbstractText>Old.</AbstractText>"),
    citation("7", "Will be deleted."),
)
UPDATE = medline(
    citation("6", "New version.", "<AbstractText>New.</AbstractText>"),
    "<DeleteCitation><PMID Version='1'>7</PMID></DeleteCitation>",
)


@pytest.fixture
def medline_files(tmp_path: Path) -> list[Path]:
    baseline = tmp_path / "base.xml"
    baseline.write_text(BASELINE, encoding="utf-8")
    update = tmp_path / "update.xml.gz"
    with gzip.open(update, "wt", encoding="utf-8") as f:
        f.write(UPDATE)
    return [baseline, update]


def test_medline_fields_and_update_rules(medline_files):
    docs = {d.pmid: d.text for d in read_medline(medline_files)}
    assert docs == {
        "1": "Structured study. BACKGROUND: Why. RESULTS: It works in H2O at 10-3 M.",
        "2": "Title only.",
        "4": "Abstract only.",
        "5": "Titre.",
        "6": "New version. New.",  # the update's version wins; 7 is deleted; 3 is empty
    }
    # Order follows the files: baseline records first, then the update's.
    assert [d.pmid for d in read_medline(medline_files)] == ["1", "2", "4", "5", "6"]


def test_medline_without_dedupe_keeps_every_record(medline_files):
    pmids = [d.pmid for d in read_medline(medline_files, dedupe="none")]
    assert pmids == ["1", "2", "4", "5", "6", "7", "6"]


def test_medline_duplicate_within_one_file_keeps_last(tmp_path):
    path = tmp_path / "dup.xml"
    path.write_text(medline(citation("8", "First."), citation("8", "Second.")), encoding="utf-8")
    assert list(read_medline([path])) == [Document("8", "Second.")]


def test_malformed_xml_names_the_file(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text(BASELINE[:300], encoding="utf-8")
    with pytest.raises(BioGPTError, match=r"broken\.xml: malformed XML"):
        list(read_documents([path]))
    gz = tmp_path / "truncated.xml.gz"
    gz.write_bytes(gzip.compress(BASELINE.encode())[:200])
    with pytest.raises(BioGPTError, match=r"truncated\.xml\.gz"):
        list(read_documents([gz]))


def test_text_lines_and_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first  line\n\nsecond\nthird\n\n\n", encoding="utf-8")
    assert [d.text for d in read_text(path)] == ["first line", "second", "third"]
    assert [d.text for d in read_text(path, paragraphs=True)] == ["first line", "second third"]


def test_jsonl(tmp_path):
    path = tmp_path / "a.jsonl"
    records = [
        {"text": "Plain text."},
        {"pmid": 42, "title": "T.", "abstract": "A b."},
        {"title": "", "abstract": ""},
    ]
    path.write_text("\n".join(map(json.dumps, records)) + "\n\n", encoding="utf-8")
    assert list(read_jsonl(path)) == [Document(None, "Plain text."), Document("42", "T. A b.")]
    path.write_text('{"text": "ok"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(BioGPTError, match=r"a\.jsonl:2"):
        list(read_jsonl(path))


def test_read_documents_checks_inputs_first(tmp_path, medline_files):
    text = tmp_path / "b.txt"
    text.write_text("one\n", encoding="utf-8")
    assert len(list(read_documents([*medline_files, text]))) == 6
    with pytest.raises(BioGPTError, match="no such file"):
        read_documents([text, tmp_path / "missing.txt"]).__next__()
    with pytest.raises(BioGPTError, match="unknown input type"):
        read_documents([tmp_path / "c.csv"]).__next__()


def test_split_is_deterministic_and_near_the_fraction():
    docs = [Document(str(i), f"text {i}") for i in range(4000)]
    first = [split_of(d, 0.1) for d in docs]
    assert first == [split_of(d, 0.1) for d in docs]
    assert 300 < first.count("valid") < 500
    # The PMID decides, not the text: a new version of a document keeps its split.
    assert all(
        split_of(Document(d.pmid, "changed"), 0.1) == s for d, s in zip(docs, first, strict=True)
    )
    assert {split_of(d, 0.0) for d in docs} == {"train"}
    with pytest.raises(BioGPTError):
        split_of(docs[0], 1.0)


def test_exclusion(tmp_path):
    path = tmp_path / "pmids.txt"
    path.write_text("1\n# test set\n3  \n\n", encoding="utf-8")
    pmids = read_pmid_list(path)
    assert pmids == {"1", "3"}
    docs = [Document("1", "a"), Document("2", "b"), Document(None, "c"), Document("3", "d")]
    assert [d.text for d in exclude(docs, pmids)] == ["b", "c"]


def test_evaluation_test_pmids(tmp_path):
    path = tmp_path / "abstracts.jsonl"
    rows = [
        {"pmid": "1", "split": "test"},
        {"pmid": "2", "split": "train"},
        {"pmid": 3, "split": "test"},
    ]
    path.write_text("\n".join(map(json.dumps, rows)), encoding="utf-8")
    assert evaluation_test_pmids(path) == {"1", "3"}
    shared = DATA / "pretrain" / "abstracts.jsonl"
    if shared.is_file():
        assert len(evaluation_test_pmids(shared)) > 2000
