"""Relations of a parsed answer, named as PubTator3 and BioRED name them, with the sentence
they came from.

A relation task's parse is a list of (head, tail) or (head, tail, interaction) tuples
(`biogpt.tasks.relation`). Each becomes one relation row carrying, besides the names as the
model wrote them:

- `relation`: the task's own word: "chemical-induced disease" for BC5CDR, the interaction
  for KD-DTI and DDI, the relation of a custom task;
- `head_type`, `tail_type`: the entity types as BioRED and PubTator3 write them
  (Chemical, Disease, Gene);
- `biored`: BioRED's relation type (Luo et al., Briefings in Bioinformatics 2022:
  Association, Positive_Correlation, Negative_Correlation, Bind, Cotreatment, Comparison,
  Drug_Interaction, Conversion), and `pubtator`: PubTator3's (treat, cause, associate,
  interact, inhibit, stimulate, prevent, positive_correlate, negative_correlate, cotreat,
  drug_interact, compare), where the task's relation corresponds to one; else None;
- `sentence`: the first sentence of the document that names both entities (case
  ignored), as PubTator3 and SemMedDB give a sentence as evidence; None where no one
  sentence names both (a document-level relation).

The mapping, and why:

| task | relation | head, tail types | BioRED | PubTator3 |
|---|---|---|---|---|
| bc5cdr | chemical-induced disease | Chemical, Disease | Positive_Correlation (BioRED's guidelines file a chemical that induces a disease there) | cause |
| ddi | mechanism, effect, advise, int | Chemical, Chemical | Drug_Interaction | drug_interact |
| kd-dti | inhibitor, antagonist, blocker, negative modulator ... | Chemical, Gene | Negative_Correlation | inhibit |
| kd-dti | agonist, activator, inducer, positive modulator ... | Chemical, Gene | Positive_Correlation | stimulate |
| kd-dti | binder, ligand | Chemical, Gene | Bind | interact |
| kd-dti | any other interaction (substrate, modulator, ...) | Chemical, Gene | Association | associate |
| custom | the template's relation | None, None | None | None |
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BC5CDR_RELATION = "chemical-induced disease"

# task -> (head type, tail type); the types BioRED and PubTator3 use
ENTITY_TYPES = {
    "bc5cdr": ("Chemical", "Disease"),
    "ddi": ("Chemical", "Chemical"),
    "kd-dti": ("Chemical", "Gene"),
}

# KD-DTI interaction words -> (BioRED, PubTator3), matched as substrings of the interaction,
# the first match winning ("negative modulator" is tested before "modulator").
DTI_TYPES: tuple[tuple[str, tuple[str, str]], ...] = (
    ("inhibit", ("Negative_Correlation", "inhibit")),
    ("antagonist", ("Negative_Correlation", "inhibit")),
    ("blocker", ("Negative_Correlation", "inhibit")),
    ("negative", ("Negative_Correlation", "inhibit")),
    ("inverse agonist", ("Negative_Correlation", "inhibit")),
    ("suppressor", ("Negative_Correlation", "inhibit")),
    ("agonist", ("Positive_Correlation", "stimulate")),
    ("activator", ("Positive_Correlation", "stimulate")),
    ("inducer", ("Positive_Correlation", "stimulate")),
    ("potentiator", ("Positive_Correlation", "stimulate")),
    ("positive", ("Positive_Correlation", "stimulate")),
    ("stimulator", ("Positive_Correlation", "stimulate")),
    ("binder", ("Bind", "interact")),
    ("binding", ("Bind", "interact")),
    ("ligand", ("Bind", "interact")),
)


@dataclass(frozen=True)
class Relation:
    """One relation of an answer; see the module docstring for the fields."""

    head: str
    tail: str
    relation: str
    head_type: str | None
    tail_type: str | None
    biored: str | None
    pubtator: str | None
    sentence: str | None


def standard_types(task: str, relation: str) -> tuple[str | None, str | None]:
    """(BioRED type, PubTator3 type) of a task's relation; (None, None) where none fits."""
    if task == "bc5cdr":
        return "Positive_Correlation", "cause"
    if task == "ddi":
        return "Drug_Interaction", "drug_interact"
    if task == "kd-dti":
        word = relation.lower()
        for key, types in DTI_TYPES:
            if key in word:
                return types
        return "Association", "associate"
    return None, None


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def sentences(text: str) -> list[str]:
    """The sentences of a text: split after ".", "!" or "?" before a capital, digit or
    bracket (simple, but it keeps "e.g. aspirin" and "2.5 mg" whole)."""
    return [s for s in _SENTENCE_END.split(text) if s]


def evidence(text: str, head: str, tail: str) -> str | None:
    """The first sentence of `text` that names both `head` and `tail`, case ignored."""
    head, tail = head.lower(), tail.lower()
    for sentence in sentences(text):
        lowered = sentence.lower()
        if head in lowered and tail in lowered:
            return sentence
    return None


def relations_of(task: str, value: Any, text: str) -> list[Relation]:
    """The relations of a parsed answer `value` (`Parsed.value`) of `task` on the document
    `text`; none for tasks whose answers are not relations (classes, answers, entities)."""
    if task not in ENTITY_TYPES and task != "custom":
        return []
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    head_type, tail_type = ENTITY_TYPES.get(task, (None, None))
    found = []
    for item in value:
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            continue
        head, tail = str(item[0]), str(item[1])
        relation = str(item[2]) if len(item) == 3 else BC5CDR_RELATION
        biored, pubtator = standard_types(task, relation)
        found.append(
            Relation(
                head, tail, relation, head_type, tail_type, biored, pubtator,
                evidence(text, head, tail),
            )
        )  # fmt: skip
    return found
