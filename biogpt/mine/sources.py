"""Input files for mining as a stream of events: a record (one citation's text), a deletion
(MEDLINE's `DeleteCitation`) or a malformed record, each with the file and line it came
from.

The corpus readers (`biogpt.corpus.readers`) make pretraining text: they stop at the first
bad line and keep neither versions nor line numbers. Mining needs all three, so this module
reads the same layouts again, one record at a time, never holding a file:

- MEDLINE/PubMed XML (`.xml`, `.xml.gz`): each `MedlineCitation` is a record whose text is
  `title + " " + abstract` (structured abstract parts as "LABEL: text"), as the corpus
  readers build it; `<PMID Version="N">` and `DateRevised` date it, so that the newest
  version of a citation can win (`biogpt.mine.store`). Each PMID of a `DeleteCitation` is a
  deletion. A citation without a PMID or without text is malformed; a file that is not
  well-formed XML is one malformed event at the line where parsing stopped, and the rest of
  that file is skipped.
- JSONL (`.jsonl`, `.jsonl.gz`): one object per line with `"text"` or `"title"` and
  `"abstract"`, and the document's `"pmid"` (or `"id"`); an optional integer `"version"`.
- PubTator (`.pubtator`, `.pubtator.gz`): `pmid|t|title` and `pmid|a|abstract` lines, the
  annotation lines after them (ignored here), documents separated by blank lines.

Line numbers count from 1. For XML the line is where the element starts: the parser is fed
one line at a time, so the events it gives back after line N started on line N.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from biogpt.corpus.readers import article_text
from biogpt.errors import BioGPTError

# file-name endings (".gz" looked through) -> reader
KINDS = {".xml": "medline", ".jsonl": "jsonl", ".pubtator": "pubtator"}


@dataclass(frozen=True)
class Record:
    """One document: `text` is what the task formats into its source.

    `version` and `revised` (MEDLINE's PMID version and DateRevised as YYYY-MM-DD) order two
    records of one PMID; both are 0 / "" where the input gives none."""

    pmid: str
    text: str
    source: str
    line: int
    version: int = 0
    revised: str = ""

    @property
    def content_hash(self) -> str:
        """What identifies this version of the document: a hash of its text."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:32]

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Deletion:
    """A PMID withdrawn by MEDLINE (`DeleteCitation`)."""

    pmid: str
    source: str
    line: int


@dataclass(frozen=True)
class Malformed:
    """A record that could not be read; it is counted and skipped."""

    source: str
    line: int
    reason: str

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


Event = Record | Deletion | Malformed


def kind_of(path: str | Path) -> str:
    """ "medline", "jsonl" or "pubtator" from the file name; a one-line error otherwise."""
    name = Path(path).name.lower().removesuffix(".gz")
    for suffix, kind in KINDS.items():
        if name.endswith(suffix):
            return kind
    raise BioGPTError(
        f"--input {path}: unknown input type (expected .xml, .jsonl or .pubtator, optionally .gz)"
    )


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """The files that `patterns` (paths or globs) name, each glob's matches sorted (so that
    MEDLINE update files come in publication order), in the order given, each file once.
    A pattern that names nothing, or a file of an unknown type, is a one-line error."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not Path(matches[0]).exists():
            raise BioGPTError(f"--input {pattern}: no such file")
        for match in matches:
            path = Path(match).resolve()
            if not path.is_file():
                raise BioGPTError(f"--input {match}: not a file")
            kind_of(path)
            if path not in files:
                files.append(path)
    if not files:
        raise BioGPTError("no --input files")
    return files


def read_events(paths: Iterable[Path]) -> Iterator[Event]:
    """Every event of every file, in order (see the module docstring)."""
    readers = {"medline": medline_events, "jsonl": jsonl_events, "pubtator": pubtator_events}
    for path in paths:
        yield from readers[kind_of(path)](path)


def _open(path: Path) -> IO[bytes]:
    try:
        if path.name.endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]  # a GzipFile is one
        return open(path, "rb")
    except OSError as err:
        raise BioGPTError(f"{path}: cannot open ({err.strerror or err})") from None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(number, raw line) of a file; a truncated or corrupt .gz ends the file."""
    with _open(path) as f:
        number = 0
        try:
            for number, raw in enumerate(f, start=1):  # `number` is read after the loop
                yield number, raw
        except (OSError, EOFError) as err:
            raise _Unreadable(number + 1, str(err)) from None


class _Unreadable(Exception):
    """A compressed file that stops being readable at `line`."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line, self.reason = line, reason


def _clean(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------
# JSONL
# --------------------------------------------------------------------------------------------


def jsonl_events(path: Path) -> Iterator[Event]:
    """Records of a JSONL file; a line that is not such an object is malformed."""
    source = str(path)
    try:
        for number, raw in _lines(path):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield Malformed(source, number, "not UTF-8")
                continue
            except json.JSONDecodeError as err:
                yield Malformed(source, number, f"not JSON ({err.msg})")
                continue
            yield _jsonl_record(record, source, number)
    except _Unreadable as err:
        yield Malformed(source, err.line, f"cannot be read ({err.reason})")


def _jsonl_record(record: object, source: str, line: int) -> Event:
    if not isinstance(record, dict):
        return Malformed(source, line, "not a JSON object")
    pmid = record.get("pmid", record.get("id"))
    if isinstance(pmid, bool) or not isinstance(pmid, (str, int)) or not str(pmid).strip():
        return Malformed(source, line, 'no "pmid" (or "id") string or integer')
    if "text" in record:
        text = record["text"]
    else:
        title, abstract = record.get("title") or "", record.get("abstract") or ""
        text = f"{title} {abstract}" if isinstance(title, str) and isinstance(abstract, str) else 0
    if not isinstance(text, str):
        return Malformed(source, line, '"text" (or "title"/"abstract") must be strings')
    text = _clean(text)
    if not text:
        return Malformed(source, line, "no text")
    version = record.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        return Malformed(source, line, '"version" must be an integer')
    return Record(str(pmid).strip(), text, source, line, version)


# --------------------------------------------------------------------------------------------
# PubTator
# --------------------------------------------------------------------------------------------

_PUBTATOR_TEXT = re.compile(r"(\d+)\|([ta])\|(.*)")


def pubtator_events(path: Path) -> Iterator[Event]:
    """Records of a PubTator file: each document's title and abstract lines; the annotation
    lines (tab-separated, starting with the PMID) are skipped, any other line is malformed."""
    source = str(path)
    pmid: str | None = None
    start = 0
    parts: dict[str, str] = {}

    def finish() -> Event | None:
        if pmid is None:
            return None
        text = _clean(f"{parts.get('t', '')} {parts.get('a', '')}")
        return Record(pmid, text, source, start) if text else Malformed(source, start, "no text")

    try:
        for number, raw in _lines(path):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield Malformed(source, number, "not UTF-8")
                continue
            if not line.strip():  # a document ends at a blank line
                if (done := finish()) is not None:
                    yield done
                pmid, parts = None, {}
                continue
            head = _PUBTATOR_TEXT.match(line)
            if head:
                if head[1] != pmid:
                    if (done := finish()) is not None:
                        yield done
                    pmid, start, parts = head[1], number, {}
                parts[head[2]] = head[3]
            elif not (pmid is not None and line.startswith(pmid + "\t")):
                yield Malformed(source, number, "not a PubTator line")
    except _Unreadable as err:
        yield Malformed(source, err.line, f"cannot be read ({err.reason})")
    if (done := finish()) is not None:
        yield done


# --------------------------------------------------------------------------------------------
# MEDLINE XML
# --------------------------------------------------------------------------------------------


def _text_of(element: ET.Element | None) -> str:
    # itertext keeps the text inside inline markup (<i>, <sup>) and after it
    return "" if element is None else _clean("".join(element.itertext()))


def _revised(citation: ET.Element) -> str:
    """DateRevised as YYYY-MM-DD ("" where the citation has none)."""
    date = citation.find("DateRevised")
    if date is None:
        return ""
    parts = [_text_of(date.find(name)) for name in ("Year", "Month", "Day")]
    return "-".join(p.zfill(2) for p in parts if p)


def _citation_event(citation: ET.Element, source: str, line: int) -> Event:
    pmid_element = citation.find("PMID")
    pmid = _text_of(pmid_element)
    if not pmid:
        return Malformed(source, line, "MedlineCitation without a PMID")
    version_text = (pmid_element.get("Version") if pmid_element is not None else None) or "1"
    if not version_text.isdigit():
        return Malformed(source, line, f"PMID {pmid}: Version {version_text!r} is no number")
    text = article_text(citation.find("Article"))
    if not text:
        return Malformed(source, line, f"PMID {pmid}: no title or abstract")
    return Record(pmid, text, source, line, int(version_text), _revised(citation))


def medline_events(path: Path) -> Iterator[Event]:
    """Records and deletions of a MEDLINE/PubMed XML file, in file order.

    Only the current top-level record is ever held: the root is cleared each time one of its
    children ends, so a file of any size reads in constant memory."""
    source = str(path)
    parser: ET.XMLPullParser = ET.XMLPullParser(events=("start", "end"))
    root: ET.Element | None = None
    depth = 0
    started: dict[int, int] = {}  # id(element) -> line of its start tag, for open records
    number = 0
    try:
        for number, raw in _lines(path):
            parser.feed(raw)
            for event, element in parser.read_events():  # type: ignore[misc]  # (str, Element)
                assert isinstance(element, ET.Element)
                if event == "start":
                    root = element if root is None else root
                    depth += 1
                    if element.tag in ("MedlineCitation", "DeleteCitation"):
                        started[id(element)] = number
                    continue
                depth -= 1
                line = started.pop(id(element), number)
                if element.tag == "MedlineCitation":
                    yield _citation_event(element, source, line)
                elif element.tag == "DeleteCitation":
                    for deleted in element.iterfind("PMID"):
                        if pmid := _text_of(deleted):
                            yield Deletion(pmid, source, line)
                if depth == 1 and root is not None:
                    root.clear()
        parser.close()
    except ET.ParseError as err:
        line = err.position[0] if getattr(err, "position", None) else number
        yield Malformed(source, line, f"malformed XML ({err}); the rest of the file is skipped")
    except _Unreadable as err:
        yield Malformed(source, err.line, f"cannot be read ({err.reason})")
