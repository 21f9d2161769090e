"""Hallmarks of Cancer (HoC) as generation: the labels of one sentence (facts section 3).

The release's data are sentence rows `sentence<TAB>label1|label2` (`empty` when none);
the test file has a blank line after each document. Source: the sentence, with "."
appended (no space) if it does not end in one; target: `the type of this document is
{label1|label2}.` with the labels joined by "|" exactly as in the file. Ids are the 0-based
index of the sentence row, blank lines skipped.
"""

from __future__ import annotations

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

CLASSES = (
    "activating invasion and metastasis",
    "avoiding immune destruction",
    "cellular energetics",
    "empty",
    "enabling replicative immortality",
    "evading growth suppressors",
    "genomic instability and mutation",
    "inducing angiogenesis",
    "resisting cell death",
    "sustaining proliferative signaling",
    "tumor promoting inflammation",
)
PREFIX = "the type of this document is"


class HoC(Task):
    """Multi-label sentence classification into the 10 hallmarks or `empty`."""

    name = "hoc"
    prompt_length = 1
    max_source_tokens = 900
    hyperparameters = Hyperparameters(lr=1e-5, warmup_updates=1000, max_updates=20_000)
    splits = ("train", "test")  # the release distributes no validation file
    main_metric = "micro_f1"

    def load(self, split: str, data_dir: str | Path | None = None) -> list[Example]:
        """Sentence rows of `hoc/{split}.tsv`."""
        check_split(self, split)
        path = data_file(data_dir, "hoc", f"{split}.tsv")
        examples: list[Example] = []
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            if not line.strip():
                continue  # blank lines separate documents; they are not rows
            sentence, sep, labels = line.partition("\t")
            if not sep or not labels.strip():
                raise BioGPTError(f"{path}:{number}: expected `sentence<TAB>labels`")
            labels = labels.strip()
            examples.append(
                Example(
                    id=str(len(examples)),
                    source=self.format_source(sentence),
                    target=self.format_target(labels),
                    gold={label.strip() for label in labels.split("|")},
                )
            )
        return examples

    @staticmethod
    def format_source(sentence: str) -> str:
        """The sentence, stripped, with "." appended if it does not end in one."""
        sentence = sentence.strip()
        return sentence if sentence.endswith(".") else sentence + "."

    def source_of_text(self, text: str) -> str:
        return self.format_source(text)

    @staticmethod
    def format_target(labels: str) -> str:
        """`the type of this document is {labels}.` with the file's "|"-joined labels."""
        return f"{PREFIX} {labels}."

    def parse(self, text: str, example: Example) -> Parsed:
        """The set of known classes named after the prefix (prefix optional); every other
        non-empty "|"-piece counts as unparseable, and so does an answer without labels
        (an empty one, or one of echoed prompt tokens). A sentence with no hallmark is
        answered with the class `empty`, so no labels is never a real answer."""
        answer = clean_answer(text)
        if answer.startswith(PREFIX):
            answer = answer[len(PREFIX) :]
        pieces = [piece.strip() for piece in answer.split("|") if piece.strip()]
        labels = {piece for piece in pieces if piece in CLASSES}
        bad = sum(piece not in CLASSES for piece in pieces)
        return Parsed(labels, bad or int(not labels))  # no label at all is unparseable too

    def score(self, examples: Sequence[Example], parsed: Mapping[str, Parsed]) -> dict[str, float]:
        """`micro_f1` (with `micro_precision`, `micro_recall`) over the 11 classes including
        `empty`; labels outside them are ignored (release evaluation)."""
        prf = metrics.multilabel_micro_f1(
            [parsed[example.id].value for example in examples],
            [example.gold for example in examples],
            CLASSES,
        )
        return {"micro_precision": prf.precision, "micro_recall": prf.recall, "micro_f1": prf.f1}

    def empty(self) -> Parsed:
        return Parsed(set())
