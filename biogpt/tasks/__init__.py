"""Downstream tasks: a registry of `Task`s (data, formatting, parser, metric).

task = biogpt.tasks.get("bc5cdr")
examples = task.load("test", data_dir)
tokenizer.add_tokens(task.prompt())
ids, loss_mask = encode_example(tokenizer, task, examples[0])   # training sample
prompt = encode_prompt(tokenizer, task, examples[0].source)     # inference input
scores = score_predictions(task, examples, {id: generated_text})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.tasks.base import (
    Example,
    Hyperparameters,
    Parsed,
    Task,
    clean_answer,
    encode_example,
    encode_prompt,
    prompt_tokens,
    score_predictions,
    source_ids,
)
from biogpt.tasks.classify import HoC
from biogpt.tasks.custom import Custom
from biogpt.tasks.ner import NER
from biogpt.tasks.predictions import read_predictions, write_predictions
from biogpt.tasks.qa import PubMedQA, PubMedQAReasoningFree
from biogpt.tasks.relation import BC5CDR, DDI, KDDTI, read_pubtator

_REGISTRY: dict[str, Callable[..., Task]] = {}


def register(name: str, factory: Callable[..., Task]) -> None:
    """Make `get(name)` build a task with `factory(**options)`; names are unique."""
    if name in _REGISTRY:
        raise BioGPTError(f"task {name!r} is already registered")
    _REGISTRY[name] = factory


def names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **options: Any) -> Task:
    """A new instance of the task `name`; `options` go to its constructor (only `custom`
    takes any: template, prompt_length, max_source_tokens)."""
    if name not in _REGISTRY:
        raise BioGPTError(f"unknown task {name!r}: expected one of {', '.join(names())}")
    return _REGISTRY[name](**options)


_BUILT_IN: tuple[type[Task], ...] = (
    BC5CDR,
    KDDTI,
    DDI,
    PubMedQA,
    PubMedQAReasoningFree,
    HoC,
    NER,
    Custom,
)
for _factory in _BUILT_IN:
    register(_factory.name, _factory)

__all__ = [
    "Example",
    "Hyperparameters",
    "Parsed",
    "Task",
    "clean_answer",
    "encode_example",
    "encode_prompt",
    "get",
    "names",
    "prompt_tokens",
    "read_predictions",
    "read_pubtator",
    "register",
    "score_predictions",
    "source_ids",
    "write_predictions",
]
