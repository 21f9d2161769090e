"""Score one source as `biogpt score` does, then look closer: intervals, per-example
records and the tables of `biogpt.report.breakdown`.

The point values are `score_file`'s (the function behind `biogpt score --task`), so the
report's numbers are the command's. Each answer is then parsed once more and kept; the
bootstrap recomputes the task's own `score` on resamples of those parsed answers, never
parsing again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.report import breakdown
from biogpt.report.bootstrap import Interval, Statistic, bootstrap_intervals
from biogpt.report.inputs import Source
from biogpt.tasks.base import Example, Parsed, Task
from biogpt.tasks.evaluation import score_file, structure
from biogpt.tasks.predictions import read_predictions
from biogpt.tasks.registry import get

# What `score_predictions` adds to a task's metrics: counts, not metrics.
COUNTS = ("examples", "missing", "unknown_ids", "unparseable", "unparseable_pieces")
SHOWN_SOURCE_CHARS = 300  # samples.jsonl keeps this much of a long input

# What one example of a task is: the unit the bootstrap resamples and n counts. HoC's rows
# are sentences (`biogpt.tasks.classify.HoC.load` keeps no document grouping, so none is
# made up here); every other reportable task's example is a document (PubMedQA: a question
# with its abstract).
SENTENCE_TASKS = frozenset({"hoc"})


def unit_of(task: str) -> str:
    """What an example of `task` is: "sentences" or "documents" (see SENTENCE_TASKS)."""
    return "sentences" if task in SENTENCE_TASKS else "documents"


@dataclass
class Scored:
    """A source's examples with their answers parsed, and the metrics `biogpt score` prints."""

    source: Source
    task: Task
    examples: list[Example]
    answers: dict[str, str | None]  # example id -> the prediction (None: none given)
    parsed: dict[str, Parsed]
    scores: dict[str, float]  # score_file's: the task's metrics and the COUNTS
    intervals: dict[str, Interval] = field(default_factory=dict)
    # BC5CDR's shown names, worked out once for the split and dropped with it
    names: breakdown.ShownNames = field(default_factory=breakdown.ShownNames)

    @property
    def unit(self) -> str:
        """What an example is, so what the bootstrap resamples: see `unit_of`."""
        return unit_of(self.task.name)

    @property
    def metrics(self) -> dict[str, float]:
        """The task's metrics, without the counts, in the order `score` returns them."""
        return {k: v for k, v in self.scores.items() if k not in COUNTS}

    @property
    def counts(self) -> dict[str, int]:
        return {k: int(self.scores[k]) for k in COUNTS if k in self.scores}


def data_root(source: Source, data_dir: str | Path | None) -> str | Path | None:
    """Where the gold comes from: `data_dir` when given, else the data root the input
    recorded (where it still exists), else the tasks' default ($BIOGPT_DATA)."""
    if data_dir is not None:
        return data_dir
    if source.data and Path(source.data).is_dir():
        return source.data
    return None


def score_source(source: Source, data_dir: str | Path | None = None) -> Scored:
    """Load the split's first `limit` examples, score the predictions (one-line errors for
    a file that is not predictions or matches no example) and keep each parsed answer."""
    task = get(source.task)
    examples = task.load(source.split, data_root(source, data_dir))[: source.limit]
    if not examples:
        raise BioGPTError(f"{source.input}: the {source.task} {source.split} split is empty")
    scores = score_file(task, examples, source.predictions)
    predictions = read_predictions(source.predictions)
    answers: dict[str, str | None] = {ex.id: predictions.get(ex.id) for ex in examples}
    parsed = {}
    for example in examples:
        answer = answers[example.id]
        parsed[example.id] = task.empty() if answer is None else task.parse(answer, example)
    return Scored(source, task, examples, answers, parsed, scores)


def resampled_score(
    task: Task, examples: Sequence[Example], parsed: Mapping[str, Parsed]
) -> Statistic:
    """The bootstrap statistic of a task: its own `score` on a resample of the examples.

    An example drawn k times enters as k examples with distinct ids (`id`, then a NUL and
    the copy number), since `score` keys answers by id and BC5CDR's metric counts
    (document id, pair) once; the copies are made once and reused by every resample.
    """
    copies: dict[tuple[int, int], Example] = {}

    def statistic(indices: Sequence[int]) -> Mapping[str, float]:
        drawn: Counter[int] = Counter()
        chosen, answers = [], {}
        for index in indices:
            key = (index, drawn[index])
            drawn[index] += 1
            copy = copies.get(key)
            if copy is None:
                original = examples[index]
                copy = copies[key] = replace(original, id=f"{original.id}\0{key[1]}")
            chosen.append(copy)
            answers[copy.id] = parsed[examples[index].id]
        return task.score(chosen, answers)

    return statistic


def add_intervals(scored: Scored, resamples: int, seed: int) -> None:
    """Bootstrap intervals of every metric of `scored` (see `biogpt.report.bootstrap`)."""
    statistic = resampled_score(scored.task, scored.examples, scored.parsed)
    found = bootstrap_intervals(len(scored.examples), statistic, resamples, seed)
    scored.intervals = {name: found[name] for name in scored.metrics if name in found}


def as_json(value: Any) -> Any:
    """A gold or parsed structure as JSON (sets sorted, relation tuples named)."""
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=repr)
    return structure(value)


def shortened(text: str, limit: int = SHOWN_SOURCE_CHARS) -> str:
    """`text`, cut after `limit` characters with a marker saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} [... {len(text) - limit} more characters]"


def sample_records(scored: Scored, source_index: int) -> list[dict[str, Any]]:
    """One samples.jsonl record per example: what went in, the gold, the answer, its
    structure, its own score (the task's metrics on that example alone), whether it is
    right (no error of any kind) and its errors: the kinds, then each item."""
    records = []
    task = scored.task
    for example in scored.examples:
        answer, parsed = scored.answers[example.id], scored.parsed[example.id]
        issues = breakdown.example_issues(task, example, answer, parsed, scored.names)
        records.append(
            {
                "task": task.name,
                "split": scored.source.split,
                "source": source_index,
                "id": example.id,
                "input": shortened(example.source),
                "gold": as_json(example.gold),
                "prediction": answer,
                "parsed": as_json(parsed.value),
                "unparseable": parsed.unparseable,
                "score": task.score([example], {example.id: parsed}),
                "correct": not issues,
                "errors": sorted({issue.kind for issue in issues}, key=breakdown.KINDS.index),
                "error_items": [issue.record() for issue in issues],
            }
        )
    return records


def tables(scored: Scored) -> dict[str, Any]:
    """The source's breakdown tables (None where the task has no such table)."""
    args = (scored.task, scored.examples, scored.parsed)
    return {
        "per_type": breakdown.per_type(*args, scored.names),
        "per_label": breakdown.per_label(*args),
        "confusion": breakdown.confusion(*args),
    }
