"""A user's own generation task from JSONL files.

Each line is one example, either
    {"id": ..., "text": ..., "target": "..."}                       (plain target)
or  {"id": ..., "text": ..., "relations": [{"head", "relation", "tail"}, ...]}
and all lines of a file are of one kind. The source is `text` as given. Relations become
the target `{template}; {template}.` (default template `the relation between {head} and
{tail} is {relation}`), or `there are no relations.` when the list is empty.

Scoring: plain targets by exact-match `accuracy` of the cleaned answer (no `learnedK`
tokens, no trailing ".", white space collapsed); relations by micro P/R/F1 over
(id, head, relation, tail) after the KD-DTI canonicalisation (lowercase, spaces removed),
plus the per-document mean F1 as `document_f1`.

`load(split, data_dir)` reads `{data_dir}/{split}.jsonl`, or `split` itself when it is the
path of a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.io import read_jsonl
from biogpt.tasks import metrics
from biogpt.tasks.base import Example, Hyperparameters, Parsed, Task, clean_answer
from biogpt.tasks.relation import Reading, Template, canonical, join_statements, parse_statements

DEFAULT_TEMPLATE = "the relation between {head} and {tail} is {relation}"
NONE = "there are no relations"


class Custom(Task):
    """A user's JSONL task; see the module docstring."""

    name = "custom"
    hyperparameters = Hyperparameters(lr=1e-5, warmup_updates=100, max_epochs=30)

    def __init__(
        self,
        template: str = DEFAULT_TEMPLATE,
        prompt_length: int = 9,
        max_source_tokens: int = 640,
    ) -> None:
        self.template = Template(template, ("head", "tail", "relation"))
        self.prompt_length = prompt_length
        self.max_source_tokens = max_source_tokens
        self.relations: bool | None = None  # set by `load`: which kind the data is
        self.main_metric = "f1"

    def options(self) -> dict[str, Any]:
        return {
            "template": self.template.text,
            "prompt_length": self.prompt_length,
            "max_source_tokens": self.max_source_tokens,
        }

    def accepts_split(self, split: str) -> bool:
        return True  # any name: `load` reads the file it names

    def load(self, split: str, data_dir: str | Path | None = None) -> list[Example]:
        """Examples of one JSONL file (see the module docstring for where it is)."""
        path = Path(split)
        if not path.is_file():
            path = Path(data_dir or ".") / f"{split}.jsonl"
        if not path.is_file():
            raise BioGPTError(f"custom split {split}: no such file (nor {path})")
        return [self._example(record, where) for where, record in read_jsonl(path)]

    def _example(self, record: object, where: str) -> Example:
        if not isinstance(record, dict) or "id" not in record or "text" not in record:
            raise BioGPTError(f'{where}: expected an object with "id" and "text"')
        if not isinstance(record["text"], str):
            raise BioGPTError(f'{where}: "text" must be a string')
        kind = "relations" in record
        if kind == ("target" in record):
            raise BioGPTError(f'{where}: give exactly one of "target" and "relations"')
        if self.relations is None:
            self.relations = kind
            self.main_metric = "f1" if kind else "accuracy"
        elif self.relations != kind:
            raise BioGPTError(f"{where}: mixes plain targets and relations in one task")
        if not kind:
            if not isinstance(record["target"], str):
                raise BioGPTError(f'{where}: "target" must be a string')
            gold = clean_answer(record["target"])
            return Example(str(record["id"]), record["text"], record["target"], gold)
        triples = []
        for relation in record["relations"] if isinstance(record["relations"], list) else [None]:
            if not isinstance(relation, dict) or not all(
                isinstance(relation.get(k), str) for k in ("head", "relation", "tail")
            ):
                raise BioGPTError(f'{where}: each relation needs string "head", "relation", "tail"')
            triples.append((relation["head"], relation["tail"], relation["relation"]))
        return Example(str(record["id"]), record["text"], self.format_target(triples), triples)

    def format_target(self, triples: Sequence[tuple[str, str, str]]) -> str:
        """The template filled in per (head, tail, relation), joined by "; " with a final
        "."; `there are no relations.` for none."""
        if not triples:
            return NONE + "."
        return join_statements(
            [self.template.format(head=h, tail=t, relation=r) for h, t, r in triples]
        )

    def parse(self, text: str, example: Example) -> Parsed:
        """Plain: the cleaned answer. Relations: [(head, tail, relation), ...] as for
        KD-DTI, readings whose names occur in the source preferred, and `there are no
        relations.` the answer that says there are none. An answer with no text once
        cleaned (empty, or only echoed prompt tokens) is unparseable in both kinds."""
        if not self.relations:
            answer = clean_answer(text)
            return Parsed(answer, int(not answer))
        if clean_answer(text).lower() == NONE:
            return Parsed([])

        def found(reading: Reading) -> int:
            return (reading["head"] in example.source) + (reading["tail"] in example.source)

        parsed = parse_statements(text, self.template, found)
        triples = [(r["head"], r["tail"], r["relation"]) for r in parsed.value]
        return Parsed(triples, parsed.unparseable)

    def score(self, examples: Sequence[Example], parsed: Mapping[str, Parsed]) -> dict[str, float]:
        """`accuracy` (plain) or `precision`/`recall`/`f1`/`document_f1` (relations)."""
        if not self.relations:
            answers = [parsed[e.id].value for e in examples]
            return {"accuracy": metrics.accuracy(answers, [e.gold for e in examples])}
        predicted: set[tuple[str, tuple[str, ...]]] = set()
        gold: set[tuple[str, tuple[str, ...]]] = set()
        documents: list[metrics.PRF] = []
        for example in examples:
            pred = {tuple(map(canonical, t)) for t in parsed[example.id].value}
            ref = {tuple(map(canonical, t)) for t in example.gold}
            predicted.update((example.id, t) for t in pred)
            gold.update((example.id, t) for t in ref)
            documents.append(metrics.document_prf(pred, ref))
        prf = metrics.set_prf(predicted, gold)
        return {
            "precision": prf.precision,
            "recall": prf.recall,
            "f1": prf.f1,
            "document_f1": metrics.mean_document_prf(documents).f1,
        }

    def empty(self) -> Parsed:
        return Parsed([] if self.relations else "")
