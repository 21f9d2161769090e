"""The task registry: each task by name, the built-in ones registered on import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.tasks.base import Task
from biogpt.tasks.classify import HoC
from biogpt.tasks.custom import Custom
from biogpt.tasks.ner import NER
from biogpt.tasks.qa import PubMedQA, PubMedQAReasoningFree
from biogpt.tasks.relation import BC5CDR, DDI, KDDTI

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
