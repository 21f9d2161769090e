"""Where a task's answers go wrong: each example's errors by kind, and the per-type,
per-label and confusion tables the report plots.

Error kinds, item by item against the gold:
- missed:      a gold item (relation, label) the answer does not hold;
- spurious:    an item of the answer that is not in the gold;
- wrong type:  the right pair with another relation type (KD-DTI, DDI), or the wrong label
               of a single-label task (PubMedQA): counted once, not as missed + spurious;
- unparseable: a piece of the answer the task's parser could not read;
- missing:     no answer at all for the example (scored as an empty one).
Items are compared as the task's metric compares them: BC5CDR by MeSH id pairs (a name
the split's table lacks is id "-1"), KD-DTI/DDI by canonical triples (lowercase, no spaces).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from biogpt.tasks.base import Example, Parsed, Task
from biogpt.tasks.classify import CLASSES, HoC
from biogpt.tasks.metrics import PRF, prf_from_counts
from biogpt.tasks.qa import LABELS, PubMedQA
from biogpt.tasks.relation import BC5CDR, DrugTriples, canonical, longest_names

KINDS = ("missed", "spurious", "wrong type", "unparseable", "missing")
NO_ANSWER = "none"  # PubMedQA's confusion column for an unparseable or missing answer
BC5CDR_TYPE = "CID"  # BC5CDR's one relation type: chemical-induced disease


@dataclass(frozen=True)
class Issue:
    """One error of an answer: its kind, and the gold and/or predicted item involved."""

    kind: str
    gold: Any = None
    predicted: Any = None

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "gold": self.gold, "predicted": self.predicted}


def prf_record(prf: PRF) -> dict[str, float]:
    return {"precision": prf.precision, "recall": prf.recall, "f1": prf.f1}


# --------------------------------------------------------------------------------------------
# Items as the metric compares them: {key: how to show it}
# --------------------------------------------------------------------------------------------


class ShownNames:
    """MeSH id -> "longest name (id)", for showing BC5CDR id pairs, worked out once per
    name table. Every example of a split shares its split's two tables, so one
    `ShownNames` per scored split names each table once; it holds the tables it has seen
    (their ids key it, so they must outlive it) only as long as it is itself kept."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Mapping[str, str], dict[str, str]]] = {}

    def __call__(self, table: Mapping[str, str]) -> dict[str, str]:
        seen = self._seen.get(id(table))
        if seen is None:
            names = {mesh: f"{name} ({mesh})" for mesh, name in longest_names(table).items()}
            seen = self._seen[id(table)] = (table, names)
        return seen[1]


def bc5cdr_items(example: Example, value: Any, names: ShownNames) -> tuple[dict, dict]:
    """(gold, predicted) as {(chemical id, disease id): shown pair}."""
    chemicals, diseases = example.context["chemical2id"], example.context["disease2id"]
    chem_names, dis_names = names(chemicals), names(diseases)
    gold = {
        (c, d): {"head": chem_names.get(c, c), "tail": dis_names.get(d, d)} for c, d in example.gold
    }
    predicted: dict[tuple[str, str], dict[str, str]] = {}
    for chemical, disease in value or []:
        key = (chemicals.get(chemical.lower(), "-1"), diseases.get(disease.lower(), "-1"))
        predicted.setdefault(key, {"head": chemical, "tail": disease})
    return gold, predicted


def triple_items(triples: Iterable[Sequence[str]]) -> dict[tuple[str, ...], dict[str, str]]:
    """{canonical triple: the triple as written}, the hard match's keys."""
    return {
        tuple(map(canonical, t)): {"head": t[0], "tail": t[1], "relation": t[2]} for t in triples
    }


def plain_items(value: Any) -> dict[Hashable, Any]:
    """Any other structure, item by item: a collection's items keyed by their JSON."""
    if value is None:
        return {}
    items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
    if not isinstance(items, list):
        items = [items]
    return {json.dumps(item, sort_keys=True, default=list): item for item in items}


def items_of(
    task: Task, example: Example, value: Any, names: ShownNames | None = None
) -> tuple[dict, dict]:
    """(gold, predicted) items of an example, keyed as the task's metric compares them;
    `names` shows BC5CDR's ids (None: worked out for this example alone)."""
    if isinstance(task, BC5CDR):
        return bc5cdr_items(example, value, names or ShownNames())
    if isinstance(task, DrugTriples):
        return triple_items(example.gold), triple_items(value or [])
    return plain_items(example.gold), plain_items(value)


# --------------------------------------------------------------------------------------------
# One example's errors
# --------------------------------------------------------------------------------------------


def example_issues(
    task: Task,
    example: Example,
    answer: str | None,
    parsed: Parsed,
    names: ShownNames | None = None,
) -> list[Issue]:
    """The errors of one answer (`answer` None: no prediction), kinds as the module
    docstring says; `names` as `items_of`'s."""
    issues = []
    if answer is None:
        issues.append(Issue("missing"))
    elif parsed.unparseable:
        issues.extend(Issue("unparseable", predicted=answer) for _ in range(parsed.unparseable))
    if isinstance(task, PubMedQA):
        if parsed.value is not None and parsed.value != example.gold:
            issues.append(Issue("wrong type", example.gold, parsed.value))
        return issues
    gold, predicted = items_of(task, example, parsed.value, names)
    missed = [key for key in gold if key not in predicted]
    spurious = [key for key in predicted if key not in gold]
    if isinstance(task, DrugTriples):  # the same (drug, target) with another interaction
        for key in list(missed):
            other = next((p for p in spurious if p[:2] == key[:2]), None)
            if other is not None:
                issues.append(Issue("wrong type", gold[key], predicted[other]))
                missed.remove(key)
                spurious.remove(other)
    issues.extend(Issue("missed", gold=gold[key]) for key in missed)
    issues.extend(Issue("spurious", predicted=predicted[key]) for key in spurious)
    return issues


# --------------------------------------------------------------------------------------------
# Tables over a split
# --------------------------------------------------------------------------------------------


def per_type(
    task: Task,
    examples: Sequence[Example],
    parsed: Mapping[str, Parsed],
    names: ShownNames | None = None,
) -> dict[str, dict[str, float]] | None:
    """Micro P/R/F1 of each relation type (KD-DTI, DDI: the interaction; BC5CDR: its one
    type, CID), over (document, item) pairs; None for a task without relation types.
    Predicted types the gold never uses are pooled as "(other)"."""
    if not isinstance(task, (BC5CDR, DrugTriples)):
        return None
    names = names or ShownNames()
    counts: dict[str, Counter[str]] = {}
    gold_types: dict[str, str] = {}  # canonical relation -> as the gold writes it
    for example in examples:
        gold, predicted = items_of(task, example, parsed[example.id].value, names)
        if isinstance(task, DrugTriples):
            gold_types.update((key[2], item["relation"]) for key, item in gold.items())
        for side, items in (("gold", gold), ("predicted", predicted)):
            for key in items:
                kind = key[2] if isinstance(task, DrugTriples) else BC5CDR_TYPE
                counts.setdefault(kind, Counter())[side] += 1
                if side == "predicted" and key in gold:
                    counts[kind]["tp"] += 1
    table: dict[str, Counter[str]] = {}
    for kind, count in counts.items():
        name = gold_types.get(kind, "(other)") if isinstance(task, DrugTriples) else kind
        table.setdefault(name, Counter()).update(count)
    return {
        name: {
            **prf_record(prf_from_counts(c["tp"], c["predicted"], c["gold"])),
            "gold": c["gold"],
            "predicted": c["predicted"],
        }
        for name, c in sorted(table.items())
    }


def per_label(
    task: Task, examples: Sequence[Example], parsed: Mapping[str, Parsed]
) -> dict[str, dict[str, float]] | None:
    """HoC: P/R/F1 of each of the 11 classes over the sentences; None for other tasks."""
    if not isinstance(task, HoC):
        return None
    out = {}
    for label in CLASSES:
        tp = n_pred = n_gold = 0
        for example in examples:
            predicted, gold = label in parsed[example.id].value, label in example.gold
            tp += predicted and gold
            n_pred += predicted
            n_gold += gold
        out[label] = {**prf_record(prf_from_counts(tp, n_pred, n_gold)), "gold": n_gold}
    return out


def confusion(
    task: Task, examples: Sequence[Example], parsed: Mapping[str, Parsed]
) -> dict[str, dict[str, int]] | None:
    """PubMedQA: {gold label: {predicted label or "none": count}}; None for other tasks."""
    if not isinstance(task, PubMedQA):
        return None
    table = {gold: dict.fromkeys((*LABELS, NO_ANSWER), 0) for gold in LABELS}
    for example in examples:
        answer = parsed[example.id].value
        table[example.gold][answer if answer in LABELS else NO_ANSWER] += 1
    return table
