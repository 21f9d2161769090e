"""Pretraining documents: streaming readers for MEDLINE XML, plain text and JSONL, plus the
deterministic train/valid split and the exclusion of evaluation documents.

A document is one PubMed citation as BioGPT pretrained on it: `title + " " + abstract`
(the layout of `shared/data/pretrain/abstracts.jsonl`), with white space collapsed.

MEDLINE/PubMed XML
------------------
Baseline and update files (`pubmed24n0001.xml.gz`, ...) are read with `iterparse`, clearing
every finished record so memory stays flat on 30k-citation files. Per `MedlineCitation`:

- title: `Article/ArticleTitle` (its full text, inline markup such as `<i>` or `<sup>`
  kept); `Article/VernacularTitle` when the English title is empty.
- abstract: every `Article/Abstract/AbstractText`, joined by spaces; a structured abstract
  labels its parts (`<AbstractText Label="METHODS">`) and each becomes "METHODS: text".
- records whose title and abstract are both empty are skipped.

MEDLINE update files hold newer versions of citations already in the baseline, and
`DeleteCitation` blocks that withdraw PMIDs. The rule here is the one that reproduces
PubMed's current state when the files are given in publication order: **the last event
for a PMID wins**. A record is kept only if no later record or deletion of its PMID
follows it in the input; a deleted PMID is dropped entirely. This needs a first pass over
the files that notes the position of each PMID's last event (about 100 bytes of memory per
PMID; the full baseline, ~36M PMIDs, needs a few GB). `dedupe="none"` streams in one pass.

Plain text and JSONL
--------------------
`.txt`: one document per non-empty line, or with `paragraphs=True` one per block of lines
separated by blank lines (lines joined by spaces). `.jsonl`: one object per line with
`"text"`, or `"title"` and `"abstract"`; an optional `"pmid"`. Any input may be gzipped
(`.gz`). These are not deduplicated.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from biogpt.errors import BioGPTError

FORMATS = {".xml": "medline", ".jsonl": "jsonl", ".txt": "text"}
DEDUPE_RULES = ("last", "none")


@dataclass(frozen=True)
class Document:
    """One pretraining document; `pmid` is None when the source has none."""

    pmid: str | None
    text: str


def _clean(text: str) -> str:
    """Collapse runs of white space (XML layout, newlines) to single spaces."""
    return " ".join(text.split())


def _join(title: str, abstract: str) -> str:
    return _clean(f"{title} {abstract}")


def input_format(path: str | Path) -> str:
    """ "medline", "jsonl" or "text" from the file name (a final ".gz" is looked through)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix):
            return kind
    raise BioGPTError(f"{path}: unknown input type (expected .xml, .jsonl or .txt, optionally .gz)")


def _open_binary(path: Path) -> BinaryIO | gzip.GzipFile:
    """`path` as bytes, decompressed when its name ends in ".gz"."""
    try:
        if path.name.endswith(".gz"):
            return gzip.open(path, "rb")
        return open(path, "rb")
    except OSError as e:
        raise BioGPTError(f"{path}: cannot open ({e.strerror or e})") from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(number, line) of a UTF-8 text file, from 1, each decoded on its own so that bytes
    that are not UTF-8 are a one-line error naming the very line."""
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BioGPTError(
                    f"{path}:{number}: not UTF-8 (byte 0x{raw[e.start]:02x}); convert it, "
                    "e.g. iconv -f latin1 -t utf-8"
                ) from None


# --------------------------------------------------------------------------------------------
# MEDLINE XML
# --------------------------------------------------------------------------------------------


def _text_of(element: ET.Element | None) -> str:
    # itertext keeps the text inside inline markup (<i>, <sup>, <b>) and after it.
    return "" if element is None else _clean("".join(element.itertext()))


def article_text(article: ET.Element | None) -> str:
    """The text of a MEDLINE `Article` element: its title (or vernacular title), then its
    abstract's sections, each after its label ("BACKGROUND: ..."); "" when it has none."""
    if article is None:
        return ""
    title = _text_of(article.find("ArticleTitle")) or _text_of(article.find("VernacularTitle"))
    parts = []
    for part in article.iterfind("Abstract/AbstractText"):
        text = _text_of(part)
        label = (part.get("Label") or "").strip()
        if text:
            parts.append(f"{label}: {text}" if label else text)
    return _join(title, " ".join(parts))


def _citation(element: ET.Element) -> Document | None:
    """The document of one `MedlineCitation` element, or None when it has no text."""
    pmid = _text_of(element.find("PMID")) or None
    text = article_text(element.find("Article"))
    return Document(pmid, text) if text else None


def _medline_events(path: Path) -> Iterator[tuple[str, str | None, Document | None]]:
    """("record", pmid, document-or-None) and ("delete", pmid, None) events in file order.

    Only the current top-level record is ever held: the root is cleared each time one of
    its children ends, so a file of any size parses in constant memory.
    """
    depth = 0
    root = None
    with _open_binary(path) as f:
        try:
            for event, element in ET.iterparse(f, events=("start", "end")):
                if event == "start":
                    if root is None:
                        root = element
                    depth += 1
                    continue
                depth -= 1
                if element.tag == "MedlineCitation":
                    doc = _citation(element)
                    pmid = _text_of(element.find("PMID")) or None
                    yield "record", pmid, doc
                elif element.tag == "DeleteCitation":
                    for deleted in element.iterfind("PMID"):
                        yield "delete", _text_of(deleted), None
                if depth == 1 and root is not None:
                    root.clear()
        except ET.ParseError as e:
            raise BioGPTError(f"{path}: malformed XML ({e})") from None
        except (OSError, EOFError) as e:  # a truncated or corrupt .gz
            raise BioGPTError(f"{path}: cannot be read ({e})") from None


def read_medline(paths: Iterable[str | Path], dedupe: str = "last") -> Iterator[Document]:
    """Documents of MEDLINE/PubMed XML files (`.xml`, `.xml.gz`), given in publication order.

    `dedupe="last"` keeps, for each PMID, only its last version and drops PMIDs a later
    `DeleteCitation` withdraws (two passes over the files); `"none"` yields every record.
    """
    if dedupe not in DEDUPE_RULES:
        raise BioGPTError(f"dedupe {dedupe!r}: expected one of {', '.join(DEDUPE_RULES)}")
    files = [Path(p) for p in paths]
    if dedupe == "none":
        for path in files:
            for _, _, doc in _medline_events(path):
                if doc is not None:
                    yield doc
        return
    # Pass 1: the position (event counter over all files) of each PMID's last event.
    last: dict[str, int] = {}
    position = 0
    for path in files:
        for _, pmid, _ in _medline_events(path):
            if pmid is not None:
                last[pmid] = position
            position += 1
    # Pass 2: a record is kept where its own position is its PMID's last event.
    position = 0
    for path in files:
        for kind, pmid, doc in _medline_events(path):
            keep = pmid is None or last.get(pmid) == position
            position += 1
            if kind == "record" and doc is not None and keep:
                yield doc


# --------------------------------------------------------------------------------------------
# Plain text and JSONL
# --------------------------------------------------------------------------------------------


def read_text(path: str | Path, paragraphs: bool = False) -> Iterator[Document]:
    """Documents of a text file: one per non-empty line, or with `paragraphs` one per block
    of lines between blank lines."""
    path = Path(path)
    block: list[str] = []
    for _, line in _lines(path):
        line = line.strip()
        if not paragraphs:
            if line:
                yield Document(None, _clean(line))
        elif line:
            block.append(line)
        elif block:
            yield Document(None, _clean(" ".join(block)))
            block = []
    if block:
        yield Document(None, _clean(" ".join(block)))


def read_jsonl(path: str | Path) -> Iterator[Document]:
    """Documents of a JSONL file: `{"text"}` or `{"title", "abstract"}`, optional `"pmid"`."""
    path = Path(path)
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if "text" in record:
                text = _clean(record["text"])
            else:
                text = _join(record.get("title") or "", record.get("abstract") or "")
            pmid = record.get("pmid")
        except (json.JSONDecodeError, TypeError, AttributeError):
            raise BioGPTError(
                f'{path}:{number}: expected a JSON object with "text" or "title"/"abstract"'
            ) from None
        if text:
            yield Document(None if pmid is None else str(pmid), text)


def read_documents(
    paths: Iterable[str | Path], paragraphs: bool = False, dedupe: str = "last"
) -> Iterator[Document]:
    """Documents of every input in order, the reader chosen by extension (`input_format`).

    All paths are checked here, before the first document is read (and before any
    progress bar starts), so a typo fails at once. Consecutive MEDLINE files are read
    together, so `dedupe` applies across them.
    """
    files = [Path(p) for p in paths]
    for path in files:
        input_format(path)
        if not path.is_file():
            raise BioGPTError(f"{path}: no such file")
    return _read_checked(files, paragraphs, dedupe)


def _read_checked(paths: list[Path], paragraphs: bool, dedupe: str) -> Iterator[Document]:
    i = 0
    while i < len(paths):
        kind = input_format(paths[i])
        if kind == "medline":
            j = i
            while j < len(paths) and input_format(paths[j]) == "medline":
                j += 1
            yield from read_medline(paths[i:j], dedupe=dedupe)
            i = j
            continue
        yield from read_jsonl(paths[i]) if kind == "jsonl" else read_text(paths[i], paragraphs)
        i += 1


# --------------------------------------------------------------------------------------------
# Split and exclusion
# --------------------------------------------------------------------------------------------


def split_of(doc: Document, valid_fraction: float) -> str:
    """ "train" or "valid", decided by a hash of the PMID (of the text when there is none).

    The hash is blake2b, not Python's `hash` (salted per process), so the split is the same
    on every run and machine, and a document keeps its split when the corpus grows.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise BioGPTError(f"valid fraction {valid_fraction}: expected 0 <= F < 1")
    key = f"pmid:{doc.pmid}" if doc.pmid is not None else f"text:{doc.text}"
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return "valid" if int.from_bytes(digest, "big") / 2**64 < valid_fraction else "train"


def exclude(docs: Iterable[Document], pmids: set[str]) -> Iterator[Document]:
    """The documents whose PMID is not in `pmids` (documents without a PMID are kept)."""
    for doc in docs:
        if doc.pmid is None or doc.pmid not in pmids:
            yield doc


def read_pmid_list(path: str | Path) -> set[str]:
    """PMIDs from a file with one per line (blank lines and `#` comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise BioGPTError(f"{path}: no such file")
    return {s for _, line in _lines(path) if (s := line.split("#")[0].strip())}


def evaluation_test_pmids(abstracts_jsonl: str | Path) -> set[str]:
    """PMIDs of the documents whose `split` is "test" in `shared/data/pretrain/abstracts.jsonl`:
    the test sets of the evaluation tasks, to keep out of pretraining."""
    path = Path(abstracts_jsonl)
    if not path.is_file():
        raise BioGPTError(f"{path}: no such file")
    out = set()
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise BioGPTError(f"{path}:{number}: not a JSON object") from None
        if isinstance(record, dict) and record.get("split") == "test" and record.get("pmid"):
            out.add(str(record["pmid"]))
    return out
