"""PubMedQA (PQA-L) as generation: yes / no / maybe (facts section 3).

Two input settings, reported separately:
- `pubmedqa` (default, the release's later "reasoning-required" setting):
  source `question: {Q} context: {C} `, contexts joined by spaces, case kept (the
  trailing space is part of the release's format);
- `pubmedqa-rf` (the paper's first, "reasoning-free" setting, where its 78.2 comes from):
  the source lines of `pubmedqa/biogpt_reasoning_free/{split}.tsv`, which add the long
  answer (`... answer: <long answer>`).
Both use the target `the answer to the question given the context is {label}.`
Ids are PMIDs; the reasoning-free rows carry none, so they take the PMIDs of the official
split files, whose order they follow (checked on load).
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
from biogpt.tasks.relation import read_json

LABELS = ("yes", "no", "maybe")
PREFIX = "the answer to the question given the context is"

# split name -> official file under pubmedqa/ (fold 0 of the dataset's own split procedure)
SPLIT_FILES = {
    "train": "pqal_fold0/train_set.json",
    "valid": "pqal_fold0/dev_set.json",
    "test": "test_set.json",
}


def read_split(split: str, data_dir: str | Path | None) -> dict[str, dict]:
    """`{pmid: record}` of an official split; test labels come from test_ground_truth.json."""
    records = read_json(data_file(data_dir, "pubmedqa", SPLIT_FILES[split]))
    if split == "test":
        truth = read_json(data_file(data_dir, "pubmedqa", "test_ground_truth.json"))
        for pmid, record in records.items():
            record["final_decision"] = truth.get(pmid, record.get("final_decision"))
    return records


class PubMedQA(Task):
    """PubMedQA with the reasoning-required input (question + contexts)."""

    name = "pubmedqa"
    prompt_length = 9
    max_source_tokens = 900
    hyperparameters = Hyperparameters(lr=1e-5, warmup_updates=100, max_epochs=100)
    main_metric = "accuracy"

    def load(self, split: str, data_dir: str | Path | None = None) -> list[Example]:
        """Questions of the official split, in file order."""
        check_split(self, split)
        return [
            Example(
                id=str(pmid),
                source=self.format_source(record["QUESTION"], record["CONTEXTS"]),
                target=self.format_target(record["final_decision"]),
                gold=record["final_decision"],
            )
            for pmid, record in read_split(split, data_dir).items()
        ]

    @staticmethod
    def format_source(question: str, contexts: Sequence[str]) -> str:
        """`question: {Q} context: {C} ` with the contexts joined by spaces, case kept."""
        return f"question: {question} context: {' '.join(contexts)} "

    @staticmethod
    def format_target(label: str) -> str:
        """`the answer to the question given the context is {label}.`"""
        return f"{PREFIX} {label}."

    def parse(self, text: str, example: Example) -> Parsed:
        """The label after the fixed prefix (a bare label is accepted too); None and one
        unparseable piece when there is none (an empty answer, or one of echoed prompt
        tokens, included). The format has no "no answer": `maybe` is the answer that
        commits to neither."""
        answer = clean_answer(text).lower()
        if answer.startswith(PREFIX):
            words = answer[len(PREFIX) :].split()
            label = words[0] if words else None
        else:
            label = answer
        if label in LABELS:
            return Parsed(label)
        return Parsed(None, 1)

    def score(self, examples: Sequence[Example], parsed: Mapping[str, Parsed]) -> dict[str, float]:
        """`accuracy` and `macro_f1` over yes/no/maybe; an unparseable or missing answer is
        wrong and belongs to no class."""
        gold = [example.gold for example in examples]
        predicted = [parsed[example.id].value for example in examples]
        return {
            "accuracy": metrics.accuracy(predicted, gold),
            "macro_f1": metrics.macro_f1(predicted, gold, LABELS),
        }

    def empty(self) -> Parsed:
        return Parsed(None)


class PubMedQAReasoningFree(PubMedQA):
    """PubMedQA with the paper's reasoning-free input (question + contexts + long answer)."""

    name = "pubmedqa-rf"

    def load(self, split: str, data_dir: str | Path | None = None) -> list[Example]:
        """Rows `source<TAB>label` of the reasoning-free TSV, ids from the official split."""
        check_split(self, split)
        path = data_file(data_dir, "pubmedqa", "biogpt_reasoning_free", f"{split}.tsv")
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            if not line.strip():
                continue
            source, sep, label = line.rpartition("\t")
            if not sep or label.strip() not in LABELS:
                raise BioGPTError(f"{path}:{number}: expected `source<TAB>yes|no|maybe`")
            rows.append((source, label.strip()))
        records = list(read_split(split, data_dir).items())
        if len(records) != len(rows) or any(
            not source.startswith(f"question: {record['QUESTION']}")
            for (source, _), (_, record) in zip(rows, records, strict=False)
        ):
            raise BioGPTError(f"{path}: rows do not follow the official {split} split's order")
        return [
            Example(id=str(pmid), source=source, target=self.format_target(label), gold=label)
            for (source, label), (pmid, _) in zip(rows, records, strict=True)
        ]
