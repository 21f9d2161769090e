"""`biogpt mine`: fine-tuned task models over literature files, into a store, exactly once.

    summary = mine(["cdr=runs/bc5cdr/averaged"], ["pubmed24n*.xml.gz"], "mined.sqlite")

A run has two passes over the inputs, both streamed (memory does not grow with the corpus):

1. ingest: every record and deletion goes to the store's `documents`, where the newest
   version of each PMID wins (`biogpt.mine.store`); malformed records are counted and
   reported with file and line, never stopping the run;
2. mine, for each model in turn: the records that are their document's winning version
   and that the ledger does not mark done for this model (same content, checkpoint and
   settings) are read again, `window` at a time, sorted by prompt length within the window
   and decoded greedily (the paper's inference) with continuous batching
   (`biogpt.mine.decode`); every `batch_size` finished documents are written with their
   ledger rows in one transaction. `Miner.results` is that per-batch work: a Ray run
   (`biogpt.mine.ray`) sends the same pending documents to actors that call it, and
   writes what they return into the store with the same ledger.

The task comes from the model's `task.json`, and each document's source is the task's
formatting of its text (`Task.source_of_text`), so the raw answers are those of
`biogpt predict --input` on the same texts with the same model.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from biogpt.checkpoint import checkpoint_hash
from biogpt.cpu.memory import trim_heap
from biogpt.decoding.config import MAX_DRAFT
from biogpt.errors import BioGPTError
from biogpt.mine.decode import Row, Speculation, greedy_rows
from biogpt.mine.relations import relations_of
from biogpt.mine.sources import Deletion, Malformed, Record, expand_inputs, read_events
from biogpt.mine.store import Ingested, Result, Store, open_store
from biogpt.tasks import Example, Task, encode_prompt, task_for_model
from biogpt.tasks.evaluation import max_new_tokens_for, structure

INGEST_CHUNK = 1000  # records per `documents` transaction
PROMPT_LOOKUP = MAX_DRAFT  # draft tokens a row may verify a pass: 8 rows x 8 tokens, 64 rows
WINDOW_BATCHES = 16  # a sorting window holds this many batches of documents
SHOWN_MALFORMED = 20  # malformed records listed in the summary (all are counted)


@dataclass(frozen=True)
class ModelSpec:
    """`--model NAME=PATH`; a bare PATH names itself."""

    name: str
    path: str

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        name, sep, path = spec.partition("=")
        if sep and name and path and "/" not in name and not Path(spec).exists():
            return cls(name, path)
        return cls(spec, spec)


@dataclass
class ModelSummary:
    """What one model's pass did."""

    name: str
    task: str
    done: int = 0  # skipped: the ledger says done
    mined: int = 0
    relations: int = 0
    removed: int = 0  # results of deleted documents removed
    recovered: int = 0  # results a killed Ray run had left in its staging folder
    seconds: float = 0.0
    speculation: Speculation = field(default_factory=Speculation)  # this machine's drafts


@dataclass
class Summary:
    """What a run did (`format` writes it for people)."""

    ingested: Ingested = field(default_factory=Ingested)
    malformed: list[Malformed] = field(default_factory=list)
    models: list[ModelSummary] = field(default_factory=list)

    def format(self) -> str:
        seen = self.ingested
        lines = [
            f"documents read: {seen.records} ({seen.new} new, {seen.changed} changed, "
            f"{seen.unchanged} unchanged, {seen.older} older versions ignored), "
            f"deletions: {seen.deletions}, malformed: {len(self.malformed)}"
        ]
        for bad in self.malformed[:SHOWN_MALFORMED]:
            lines.append(f"  malformed {bad.where}: {bad.reason}")
        if len(self.malformed) > SHOWN_MALFORMED:
            lines.append(f"  ... and {len(self.malformed) - SHOWN_MALFORMED} more malformed")
        for m in self.models:
            rate = m.mined / m.seconds if m.seconds > 0 else 0.0
            lines.append(
                f"model {m.name} ({m.task}): mined {m.mined}, skipped as done {m.done}, "
                f"relations found {m.relations}, removed as deleted {m.removed}, "
                f"{rate:.1f} documents/s"
                + (f", recovered from a killed Ray run {m.recovered}" if m.recovered else "")
            )
            if (spec := m.speculation).passes:
                lines.append(
                    f"  drafts: {spec.accepted} of {spec.drafted} draft tokens accepted in "
                    f"{spec.passes} passes, {spec.tokens_per_row_pass:.2f} tokens per row a pass"
                )
        return "\n".join(lines)


class Progress:
    """Documents/s and the time left on stderr, at most every `every` seconds."""

    def __init__(self, name: str, total: int, out: TextIO | None, every: float = 2.0) -> None:
        self.name, self.total, self.out, self.every = name, total, out, every
        self.began = self.last = time.monotonic()
        self.count = 0

    def advance(self, n: int, final: bool = False) -> None:
        self.count += n
        clock = time.monotonic()
        if self.out is None or (not final and clock - self.last < self.every):
            return
        self.last = clock
        rate = self.count / max(clock - self.began, 1e-9)
        left = max(self.total - self.count, 0)
        eta = f", {left / rate:.0f}s left" if rate > 0 and not final else ""
        print(
            f"mining {self.name}: {self.count}/{self.total} documents, {rate:.1f} documents/s"
            + eta,
            file=self.out,
            flush=True,
        )


def _records(paths: Sequence[Path], summary: Summary | None) -> Iterator[Record | Deletion]:
    """The records and deletions of the inputs; malformed ones go to `summary`."""
    for event in read_events(paths):
        if isinstance(event, Malformed):
            if summary is not None:
                summary.malformed.append(event)
            continue
        yield event


def ingest(store: Store, paths: Sequence[Path], summary: Summary) -> None:
    """Pass 1: every record and deletion into the store's documents."""
    events = _records(paths, summary)
    while chunk := list(itertools.islice(events, INGEST_CHUNK)):
        store.ingest(chunk, summary.ingested)


@dataclass(frozen=True)
class Settings:
    """The decoding settings recorded with every result (and compared by the ledger)."""

    max_new_tokens: int | None
    dtype: str

    def as_record(self, task: Task) -> dict:
        return {
            "strategy": "greedy",
            "max_new_tokens": self.max_new_tokens,
            "max_source_tokens": task.max_source_tokens,
            "dtype": self.dtype,
        }


def settings_hash(task: Task, decoding: dict) -> str:
    key = {"task": task.name, "options": task.options(), "template": task.template_version}
    text = json.dumps({**key, "decoding": decoding}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    """One model's part of a run, known before its weights load: its task, checkpoint hash
    and decoding settings, the three things a ledger row records (`Store.to_mine`)."""

    spec: ModelSpec
    settings: Settings
    task: Task
    checkpoint: str
    decoding: dict
    settings_key: str

    @classmethod
    def make(cls, spec: ModelSpec, settings: Settings, checkpoint: str | None = None) -> Plan:
        """The plan of `spec` (its checkpoint hashed unless given: a Ray actor is given the
        driver's, so that no worker reads the weights twice)."""
        task = task_for_model(spec.path, None)
        decoding = settings.as_record(task)
        return cls(
            spec, settings, task, checkpoint or checkpoint_hash(spec.path), decoding,
            settings_hash(task, decoding),
        )  # fmt: skip


class Miner:
    """A plan's model loaded: documents in, results with their provenance out.

    `results` is the per-batch function of every run: the local run streams all the pending
    documents of a model through one call, and each actor of a Ray run
    (`biogpt.mine.ray`) calls it on each batch of documents it is handed. Either way each
    answer is decoded alone (`biogpt.mine.decode`), so it does not depend on which
    documents share its batch, its window or its machine."""

    def __init__(
        self,
        plan: Plan,
        device: str | None = None,
        trust_pickle: bool = False,
        prompt_lookup: int = PROMPT_LOOKUP,
    ):
        from biogpt.api import BioGPT
        from biogpt.checkpoint.pipeline import tokenizer_for

        self.plan = plan
        self.prompt_lookup = prompt_lookup
        self.speculation = Speculation()  # what drafting did over every `results` call
        self.model = BioGPT.from_pretrained(
            plan.spec.path, dtype=plan.settings.dtype, device=device, trust_pickle=trust_pickle
        ).eval()
        self.tokenizer = tokenizer_for(plan.spec.path, self.model.config.vocab_size)

    def results(self, records: Iterable[Record], batch_size: int) -> Iterator[list[Result]]:
        """Mine `records` greedily, `batch_size` decoded together (continuous batching),
        sorted by prompt length within each window of `window_for(batch_size)`, drafting up
        to `prompt_lookup` tokens a row a pass where that is exact (the same answers;
        `biogpt.mine.decode`); yields the results that finish at each pass."""
        rows = self._rows(records, window_for(batch_size))
        eos = self.tokenizer.eos_id
        for finished in greedy_rows(
            self.model, rows, batch_size, eos, self.prompt_lookup, self.speculation
        ):
            yield [self._result(row) for row in finished]

    def _rows(self, records: Iterable[Record], window: int) -> Iterator[Row]:
        """The records as prompts with their token budgets, sorted by length per window."""
        task, model = self.plan.task, self.model
        records = iter(records)
        while chunk := list(itertools.islice(records, window)):
            rows = []
            for record in chunk:
                prompt = encode_prompt(self.tokenizer, task, task.source_of_text(record.text))
                room = max_new_tokens_for(task, model.config.max_positions, len(prompt))
                budget = min(
                    self.plan.settings.max_new_tokens or room,
                    model.config.max_positions - len(prompt),
                )
                if budget < 1:
                    raise BioGPTError(f"{record.where}: its prompt fills the model's positions")
                rows.append(Row(record, prompt, budget))
            yield from sorted(rows, key=lambda row: len(row.prompt))

    def _result(self, row: Row) -> Result:
        plan, task = self.plan, self.plan.task
        record: Record = row.key
        raw = self.tokenizer.decode(row.tokens)
        source = task.source_of_text(record.text)
        parsed = task.parse(raw, Example(id=record.pmid, source=source, target="", gold=None))
        return Result(
            pmid=record.pmid,
            model=plan.spec.name,
            checkpoint=plan.checkpoint,
            task=task.name,
            template_version=task.template_version,
            decoding=plan.decoding,
            raw=raw,
            structure=structure(parsed.value),
            unparseable=parsed.unparseable,
            confidence=row.logprob,
            span=None,  # every task here reads the whole document
            content_hash=record.content_hash,
            source=record.source,
            line=record.line,
            settings=plan.settings_key,
            relations=tuple(relations_of(task.name, parsed.value, record.text)),
        )


def window_for(batch_size: int) -> int:
    """Documents sorted by length together: `WINDOW_BATCHES` batches, at least 64."""
    return max(batch_size * WINDOW_BATCHES, 64)


@dataclass(frozen=True)
class Job:
    """What every model of a run shares; a `ModelRunner` mines one model of it."""

    store: Store
    paths: Sequence[Path]
    settings: Settings
    batch_size: int
    limit: int | None = None  # documents each model mines at most
    device: str | None = None
    trust_pickle: bool = False
    progress: TextIO | None = None
    prompt_lookup: int = PROMPT_LOOKUP  # draft tokens a row a pass (0: none)


class ModelRunner(Protocol):
    """Pass 2 for one model: `mine_model` on this machine, `biogpt.mine.ray.RayRunner` on a
    Ray cluster."""

    def __call__(self, job: Job, spec: ModelSpec) -> ModelSummary: ...


def begin_model(job: Job, spec: ModelSpec) -> tuple[Plan, ModelSummary]:
    """What a runner does first for a model: its plan, and the results of documents deleted
    since its last run removed."""
    plan = Plan.make(spec, job.settings)
    summary = ModelSummary(spec.name, plan.task.name)
    summary.removed = job.store.drop_deleted(spec.name)
    return plan, summary


def pending_total(job: Job, plan: Plan, summary: ModelSummary) -> int:
    """How many documents this run will mine for `plan` (`limit` counted); when none,
    `summary.done` counts the input records already done."""
    name, checkpoint, key = plan.spec.name, plan.checkpoint, plan.settings_key
    total = job.store.pending(name, checkpoint, key)
    if job.limit is not None:
        total = min(total, job.limit)
    if total == 0:
        summary.done = _count_done(job.store, job.paths, name, checkpoint, key)
    return total


def pending_records(job: Job, plan: Plan, summary: ModelSummary) -> Iterator[Record]:
    """The input records to mine for `plan`, in input order, at most `limit`: the ledger's
    rule (`Store.to_mine`) applied a window at a time; the records already done are counted
    in `summary.done`."""
    records = _records(job.paths, None)
    taken = 0
    while chunk := list(itertools.islice(records, window_for(job.batch_size))):
        wanted, done = job.store.to_mine(
            [r for r in chunk if isinstance(r, Record)],
            plan.spec.name,
            plan.checkpoint,
            plan.settings_key,
        )
        summary.done += done
        if job.limit is not None:
            wanted = wanted[: job.limit - taken]
        taken += len(wanted)
        yield from wanted
        if job.limit is not None and taken >= job.limit:
            return


def mine_model(job: Job, spec: ModelSpec) -> ModelSummary:
    """Pass 2 for one model on this machine (see the module docstring)."""
    began = time.monotonic()
    plan, summary = begin_model(job, spec)
    total = pending_total(job, plan, summary)
    if total == 0:
        return summary
    miner = Miner(plan, job.device, job.trust_pickle, job.prompt_lookup)
    meter = Progress(spec.name, total, job.progress)
    finished: list[Result] = []
    for results in miner.results(pending_records(job, plan, summary), job.batch_size):
        finished.extend(results)
        if len(finished) >= job.batch_size:
            write_results(job.store, finished, summary, meter)
            finished = []
            trim_heap()  # memory stays flat as the corpus grows (biogpt.cpu.memory)
    write_results(job.store, finished, summary, meter)
    meter.advance(0, final=True)
    summary.speculation = miner.speculation
    summary.seconds = time.monotonic() - began
    return summary


def _count_done(store: Store, paths: Sequence[Path], model: str, checkpoint: str, key: str) -> int:
    """How many input records are done for `model` (for a run with nothing to do)."""
    done = 0
    records = (r for r in _records(paths, None) if isinstance(r, Record))
    while chunk := list(itertools.islice(records, 1000)):
        done += store.to_mine(chunk, model, checkpoint, key)[1]
    return done


def write_results(
    store: Store, finished: list[Result], summary: ModelSummary, meter: Progress
) -> None:
    """One transaction of results with their ledger rows (`Store.record_batch`), counted."""
    store.record_batch(finished)
    summary.mined += len(finished)
    summary.relations += sum(len(r.relations) for r in finished)
    meter.advance(len(finished))


def mine(
    models: Sequence[str],
    inputs: Sequence[str],
    store: str | Path = "mined.sqlite",
    batch_size: int = 8,
    dtype: str | None = None,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    device: str | None = None,
    trust_pickle: bool = False,
    progress: TextIO | None = sys.stderr,
    on_model: Callable[[ModelSummary], None] | None = None,
    runner: ModelRunner = mine_model,
    prompt_lookup: int = PROMPT_LOOKUP,
) -> Summary:
    """Mine `inputs` (files or globs) with each of `models` (`NAME=PATH` or `PATH`, each a
    fine-tuned model with its task.json) into `store` (a SQLite file or a postgresql://
    URL); see the module docstring. `limit` caps the documents each model mines in this
    run; `runner` mines each model (`biogpt.mine.ray.RayRunner` for a Ray cluster);
    `prompt_lookup` caps the draft tokens a row verifies a pass (0: one token a pass; the
    answers are the same either way, so it is not one of the settings a result records).
    Returns what was done."""
    if batch_size < 1:
        raise BioGPTError(f"--batch-size must be positive, got {batch_size}")
    if not 0 <= prompt_lookup <= MAX_DRAFT:
        raise BioGPTError(f"--prompt-lookup must be in 0..{MAX_DRAFT}, got {prompt_lookup}")
    specs = [ModelSpec.parse(m) for m in models]
    if not specs:
        raise BioGPTError("no --model given")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise BioGPTError(f"--model: the name {_repeated(names)!r} is given twice")
    for spec in specs:
        task_for_model(spec.path, None)  # every model's task, checked before any work
    paths = expand_inputs(inputs)
    summary = Summary()
    settings = Settings(max_new_tokens, (dtype or "fp32").lower())
    with open_store(store) as opened:
        ingest(opened, paths, summary)
        job = Job(
            opened, paths, settings, batch_size, limit, device, trust_pickle, progress,
            prompt_lookup,
        )  # fmt: skip
        for spec in specs:
            done = runner(job, spec)
            summary.models.append(done)
            if on_model is not None:
                on_model(done)
    return summary


def _repeated(names: Iterable[str]) -> str:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return ""
