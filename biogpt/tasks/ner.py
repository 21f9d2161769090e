"""Named-entity recognition as generation on BC5CDR chemicals and diseases.

Data: `ner/BC5CDR-{chem,disease}-IOB/{train,devel,test}.tsv`, one `token<TAB>tag` line per
token, a blank line between sentences. The chemical and the disease files hold the same
sentences in the same order (checked on load), so they are merged into one task whose
mentions carry both types. One sentence is one example; its id is the 0-based sentence
index in the file.

Format (our design; the paper has no NER task):
    source  the sentence's tokens joined by single spaces, case kept
    target  `the entities are {mention} ({type}); {mention} ({type}).` in sentence order,
            type `chemical` or `disease`; `there are no entities.` when there are none
The mention text is the tokens of the span joined by spaces, so it appears verbatim in the
source. No gold mention in the shared files contains ";", so splitting on ";" and reading
each piece as `text (type)` (the type in the last parenthesis) is unambiguous.

Scoring maps mentions to spans by string: a predicted mention is correct when the same
sentence has a gold mention with the same lowercased text and type, each gold mention
matched at most once (multisets of (sentence id, lowercased text, type)). A sentence
naming "aspirin" twice needs "aspirin (chemical)" predicted twice. The target cannot say
which occurrence is meant, so neither does the metric.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from biogpt.errors import BioGPTError
from biogpt.tasks import metrics
from biogpt.tasks.base import (
    Example,
    Hyperparameters,
    Parsed,
    Task,
    check_split,
    clean_answer,
    data_file,
)

TYPES = {"Chemical": "chemical", "Disease": "disease"}  # IOB tag type -> target word
FOLDERS = ("BC5CDR-chem-IOB", "BC5CDR-disease-IOB")
FILES = {"train": "train.tsv", "valid": "devel.tsv", "test": "test.tsv"}
PREFIX = "the entities are"
NONE = "there are no entities"

Mention = tuple[str, str]  # (text, type)
_MENTION = re.compile(r"(.+) \((chemical|disease)\)", re.IGNORECASE)


def read_iob(path: Path) -> list[list[tuple[str, str]]]:
    """Sentences of an IOB file as lists of (token, tag)."""
    sentences: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            if current:
                sentences.append(current)
                current = []
            continue
        token, sep, tag = line.partition("\t")
        if not sep:
            raise BioGPTError(f"{path}:{number}: expected `token<TAB>tag`")
        current.append((token, tag.strip()))
    if current:
        sentences.append(current)
    return sentences


def spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(start, end, type) of each mention in IOB tags; an `I-` tag that follows `O` or
    another type starts a mention, so a malformed file loses no tokens."""
    out: list[tuple[int, int, str]] = []
    mention: tuple[int, str] | None = None  # (start, type) of the open mention
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        if mention is not None and prefix == "I" and label == mention[1]:
            continue
        if mention is not None:
            out.append((mention[0], i, mention[1]))
        mention = (i, label) if prefix in ("B", "I") else None
    return out


class NER(Task):
    """Chemical and disease mentions of BC5CDR sentences."""

    name = "ner"
    prompt_length = 9
    max_source_tokens = 512  # sentences; the longest is far below this
    hyperparameters = Hyperparameters(lr=1e-5, warmup_updates=500, max_epochs=20)

    def load(self, split: str, data_dir: str | Path | None = None) -> list[Example]:
        """Sentences of the split with the mentions of both files."""
        check_split(self, split)
        files = [data_file(data_dir, "ner", folder, FILES[split]) for folder in FOLDERS]
        chem, disease = (read_iob(path) for path in files)
        if len(chem) != len(disease):
            raise BioGPTError(f"{files[0]} and {files[1]}: different numbers of sentences")
        examples = []
        for index, (a, b) in enumerate(zip(chem, disease, strict=True)):
            tokens = [token for token, _ in a]
            if tokens != [token for token, _ in b]:
                raise BioGPTError(f"{files[0]} and {files[1]}: sentence {index} differs")
            found = spans([tag for _, tag in a]) + spans([tag for _, tag in b])
            found.sort(key=lambda s: (s[0], s[1], s[2]))
            mentions = [
                (" ".join(tokens[s:e]), TYPES.get(kind, kind.lower())) for s, e, kind in found
            ]
            examples.append(
                Example(
                    id=str(index),
                    source=" ".join(tokens),
                    target=self.format_target(mentions),
                    gold=[(text.lower(), kind) for text, kind in mentions],
                )
            )
        return examples

    @staticmethod
    def format_target(mentions: Sequence[Mention]) -> str:
        """`the entities are a (chemical); b (disease).` or `there are no entities.`"""
        if not mentions:
            return NONE + "."
        return PREFIX + " " + "; ".join(f"{text} ({kind})" for text, kind in mentions) + "."

    def parse(self, text: str, example: Example) -> Parsed:
        """[(lowercased text, type), ...]; pieces that are not `text (type)` are counted
        as unparseable. The prefix is optional. `there are no entities.` is the answer
        that says there are none; an answer with no mention and no such sentence (an
        empty one, or one of echoed prompt tokens) is unparseable."""
        answer = clean_answer(text)
        if answer.lower() == NONE:
            return Parsed([])
        if answer.lower().startswith(PREFIX):
            answer = answer[len(PREFIX) :]
        mentions, bad = [], 0
        for piece in answer.split(";"):
            piece = piece.strip()
            if not piece:
                continue
            match = _MENTION.fullmatch(piece)
            if match:
                mentions.append((match.group(1).strip().lower(), match.group(2).lower()))
            else:
                bad += 1
        return Parsed(mentions, bad if mentions or bad else 1)

    def score(self, examples: Sequence[Example], parsed: Mapping[str, Parsed]) -> dict[str, float]:
        """Entity-level micro `precision`, `recall`, `f1` (see the module docstring)."""
        predicted = [(e.id, *m) for e in examples for m in parsed[e.id].value]
        gold = [(e.id, *m) for e in examples for m in e.gold]
        prf = metrics.multiset_prf(predicted, gold)
        return {"precision": prf.precision, "recall": prf.recall, "f1": prf.f1}

    def empty(self) -> Parsed:
        return Parsed([])
