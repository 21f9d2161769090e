"""What every downstream task shares: examples, the Task interface, prompts and scoring.

BioGPT casts every downstream task as generation (facts section 3). A training sample is

    </s> source learned1 ... learnedN target </s>

where `learned1..N` are N new vocabulary entries (soft-prompt tokens) appended after the
pretrained vocabulary, and at inference the model greedily continues `</s> source
learned1 ... learnedN`; the text after the prompt is the answer.

A task is data plus four functions (style guide, principle 5):
- `load(split)`   reads the shared files into `Example`s whose source/target are already
                  formatted the way the paper formats them,
- `parse(text)`   turns a generated answer back into structure (never raises),
- `score(...)`    compares parsed answers with the gold structure,
and the formatting itself, which each task module keeps next to its reader.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.tokenizer import Tokenizer

# A cut source ends with this text (facts section 3: "a cut source ends with `...`").
ELLIPSIS = "..."


@dataclass(frozen=True)
class Example:
    """One formatted example of a task.

    id:      the key the task's file gives it (PMID, JSON key, row index), as a string.
    source:  the model input before the prompt tokens, formatted as the paper does.
    target:  the answer text after the prompt tokens, e.g. "the answer to the question
             given the context is yes.".
    gold:    the structure the metric compares against (task-specific: a set of triples,
             a label, a set of labels, a list of mentions).
    context: read-only data the parser or metric needs besides the gold, e.g. the BC5CDR
             split's name -> MeSH id tables (shared by all examples of a split).
    """

    id: str
    source: str
    target: str
    gold: Any
    context: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Parsed:
    """A generated answer turned back into structure.

    value:       the task's structure (same kind as `Example.gold`); empty when nothing
                 could be read.
    unparseable: how many pieces of the answer could not be read (0 = fully parsed).
    """

    value: Any
    unparseable: int = 0


@dataclass(frozen=True)
class Hyperparameters:
    """The paper's fine-tuning settings for a task (facts section 3 table).

    The rest of the optimiser is common to all tasks: Adam betas (0.9, 0.98), eps 1e-8,
    weight decay 0.01, no clipping, inverse-sqrt schedule with linear warmup from 1e-7,
    about 32k tokens per update, fp32.
    """

    lr: float
    warmup_updates: int
    max_epochs: int | None = None  # train for this many epochs ...
    max_updates: int | None = None  # ... or stop after this many updates (HoC)
    average_last_checkpoints: int = 1  # RE checkpoints average the last 5 epochs
    tokens_per_update: int = 32_768


class Task(ABC):
    """A downstream task: its data, formatting, parser and metric.

    Subclasses set the class attributes and implement `load`, `parse` and `score`.
    """

    name: str
    #: number of learned prompt tokens between source and target (9 RE/QA, 1 HoC)
    prompt_length: int
    #: sources longer than this many BPE tokens are cut (640 RE, 900 HoC/PubMedQA)
    max_source_tokens: int
    hyperparameters: Hyperparameters
    #: the splits `load` accepts
    splits: tuple[str, ...] = ("train", "valid", "test")
    #: the metric to select checkpoints by, one of the keys `score` returns
    main_metric: str = "f1"
    #: raised whenever the source/target formatting changes, so that a model trained on
    #: one format is not silently run on another (see `biogpt.tasks.recorded`)
    template_version: int = 1

    @abstractmethod
    def load(self, split: str, data_dir: str | Path | None = None) -> list[Example]:
        """Read one split from `data_dir` (default: `default_data_dir()`)."""

    @abstractmethod
    def parse(self, text: str, example: Example) -> Parsed:
        """Turn a generated answer (the text after the prompt) into the gold's structure.

        `example` gives the source and context some parsers use to resolve ambiguous text
        (e.g. which " and " separates two names). Never raises on malformed text.

        An answer is only what the task's format can say: an empty answer, or one made of
        nothing but echoed prompt tokens (`learned9learned9`), is unparseable (>= 1), never
        read as "nothing found". Where the format has a sentence for "nothing" (NER's
        `there are no entities.`, HoC's `empty` label), that sentence is the answer that
        parses to an empty structure with nothing unparseable.
        """

    @abstractmethod
    def score(self, examples: Sequence[Example], parsed: Mapping[str, Parsed]) -> dict[str, float]:
        """Metrics of `parsed[example.id]` against every example's gold. `parsed` holds an
        entry for every example (`score_predictions` fills in empty ones)."""

    def source_of_text(self, text: str) -> str:
        """The model input for a raw text given ad hoc (`biogpt extract`), formatted as the
        task formats its documents. The default keeps the text as it is."""
        return text

    def accepts_split(self, split: str) -> bool:
        """Whether `load` reads a split of this name."""
        return split in self.splits

    def empty(self) -> Parsed:
        """What a missing prediction counts as: the structure of an empty answer (it is
        counted as missing, not as unparseable)."""
        return Parsed(self.parse("", Example(id="", source="", target="", gold=None)).value)

    def options(self) -> dict[str, Any]:
        """The constructor options that rebuild this task with `biogpt.tasks.get` (JSON
        values; none for the built-in tasks)."""
        return {}

    def prompt(self) -> list[str]:
        """The learned prompt tokens of this task: ["learned1", ..., "learnedN"]."""
        return prompt_tokens(self.prompt_length)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


# --------------------------------------------------------------------------------------------
# Data location
# --------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """The data root when none is given: the BIOGPT_DATA environment variable.

    The root holds one folder per dataset (`bc5cdr/`, `ddi/`, `hoc/`, ...)."""
    env = os.environ.get("BIOGPT_DATA")
    if env:
        if not Path(env).is_dir():
            raise BioGPTError(f"BIOGPT_DATA={env}: no such directory")
        return Path(env)
    raise BioGPTError("no data directory: pass --data DIR (data_dir=) or set BIOGPT_DATA")


def data_file(data_dir: str | Path | None, *parts: str) -> Path:
    """Path of a shared data file; a one-line error if it is missing."""
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    path = path.joinpath(*parts)
    if not path.is_file():
        raise BioGPTError(f"{path}: no such data file")
    return path


def check_split(task: Task, split: str) -> None:
    """Raise a one-line error for a split the task does not have."""
    if split not in task.splits:
        raise BioGPTError(
            f"task {task.name} has no split {split!r}: expected one of {', '.join(task.splits)}"
        )


# --------------------------------------------------------------------------------------------
# Prompts and answers
# --------------------------------------------------------------------------------------------


def prompt_tokens(n: int) -> list[str]:
    """The names of n learned prompt tokens. They count from 1, as in the release."""
    return [f"learned{k}" for k in range(1, n + 1)]


_LEARNED = re.compile(r"learned\d+")


def clean_answer(text: str) -> str:
    """The release's post-processing of a generated answer: drop any `learnedK` tokens
    (a model may echo its prompt), strip white space and one trailing `.`."""
    text = _LEARNED.sub(" ", text)
    text = " ".join(text.split())
    return text[:-1].rstrip() if text.endswith(".") else text


# --------------------------------------------------------------------------------------------
# Token ids
# --------------------------------------------------------------------------------------------


def prompt_ids(tokenizer: Tokenizer, task: Task) -> list[int]:
    """Ids of the task's learned prompt tokens; a clear error if they were never added
    (call `tokenizer.add_tokens(task.prompt())` before building samples, and grow the
    model's embedding to `len(tokenizer)`)."""
    ids = []
    for token in task.prompt():
        index = tokenizer.token_to_id(token)
        if index == tokenizer.unk_id:
            raise BioGPTError(
                f"task {task.name}: prompt token {token!r} is not in the tokenizer; "
                f"add them with tokenizer.add_tokens(task.prompt())"
            )
        ids.append(index)
    return ids


def source_ids(tokenizer: Tokenizer, source: str, max_tokens: int) -> list[int]:
    """BPE ids of `source` (no leading `</s>`), at most `max_tokens` of them.

    A source longer than that is cut and ends with the ids of `...`, the cut included in
    the budget, as the release marks truncated sources.
    """
    ids = tokenizer.encode(source)[1:]
    if len(ids) <= max_tokens:
        return ids
    ellipsis = tokenizer.encode(ELLIPSIS)[1:]
    keep = max(0, max_tokens - len(ellipsis))
    return ids[:keep] + ellipsis[: max_tokens - keep]


def encode_prompt(tokenizer: Tokenizer, task: Task, source: str) -> list[int]:
    """Inference input: `</s> source learned1..N` as ids; generate from here and the text
    after it is the answer."""
    return [
        tokenizer.eos_id,
        *source_ids(tokenizer, source, task.max_source_tokens),
        *prompt_ids(tokenizer, task),
    ]


def encode_example(
    tokenizer: Tokenizer, task: Task, example: Example, target_only: bool = False
) -> tuple[list[int], list[int]]:
    """A training sample: ids of `</s> source learned1..N target </s>` and its loss mask.

    loss_mask[t] is 1 where token t is a label, i.e. the model is trained to predict
    ids[t] from ids[:t]. The first `</s>` is never predicted (mask 0). By default every
    other token counts, as in the paper ("the loss covers the whole sequence: source,
    prompt and target"); with `target_only` only the target and the final `</s>` do.
    """
    prefix = encode_prompt(tokenizer, task, example.source)
    target = [*tokenizer.encode(example.target)[1:], tokenizer.eos_id]
    ids = prefix + target
    mask = [0] * len(prefix) + [1] * len(target) if target_only else [0] + [1] * (len(ids) - 1)
    return ids, mask


# --------------------------------------------------------------------------------------------
# Scoring predictions
# --------------------------------------------------------------------------------------------


def score_predictions(
    task: Task, examples: Sequence[Example], predictions: Mapping[Any, str]
) -> dict[str, float]:
    """Score generated answers (`{id: text after the prompt}`) against a split.

    Never raises on bad predictions; the result reports them next to the metrics:
    `unknown_ids` (ids the split lacks, ignored), `missing` (examples without a
    prediction, scored as an empty answer), `unparseable` (answers with at least one piece
    the parser could not read; what could be read is still scored) and
    `unparseable_pieces` (the total count of such pieces). Ids compare as strings.
    """
    by_id = {str(key): value for key, value in predictions.items()}
    wanted = {example.id for example in examples}
    parsed: dict[str, Parsed] = {}
    missing = unparseable = pieces = 0
    for example in examples:
        text = by_id.get(example.id)
        if text is None:
            missing += 1
            parsed[example.id] = task.empty()
            continue
        result = task.parse(text if isinstance(text, str) else str(text), example)
        if result.unparseable:
            unparseable += 1
            pieces += result.unparseable
        parsed[example.id] = result
    scores = dict(task.score(examples, parsed))
    scores.update(
        examples=len(examples),
        unknown_ids=sum(1 for key in by_id if key not in wanted),
        missing=missing,
        unparseable=unparseable,
        unparseable_pieces=pieces,
    )
    return scores
