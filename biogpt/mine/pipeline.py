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
   ledger rows in one transaction.

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
from typing import TextIO

from biogpt.errors import BioGPTError
from biogpt.mine.decode import Row, greedy_rows
from biogpt.mine.relations import relations_of
from biogpt.mine.sources import Deletion, Malformed, Record, expand_inputs, read_events
from biogpt.mine.store import Ingested, Result, Store, open_store
from biogpt.tasks import Example, Task, encode_prompt, task_for_model
from biogpt.tasks.evaluation import max_new_tokens_for, structure

INGEST_CHUNK = 1000  # records per `documents` transaction
WINDOW_BATCHES = 16  # a sorting window holds this many batches of documents
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
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


def checkpoint_hash(path: str | Path) -> str:
    """SHA-256 over the model's weight files (name and bytes of each, sorted by name): the
    file itself, or the weight files of its directory."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
    )  # fmt: skip
    if not files:
        raise BioGPTError(f"--model {path}: no weights file (*.safetensors, *.bin, *.pt)")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode("utf-8") + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelSummary:
    """What one model's pass did."""

    name: str
    task: str
    done: int = 0  # skipped: the ledger says done
    mined: int = 0
    relations: int = 0
    removed: int = 0  # results of deleted documents removed
    seconds: float = 0.0


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


def mine_model(
    store: Store,
    spec: ModelSpec,
    paths: Sequence[Path],
    settings: Settings,
    batch_size: int,
    limit: int | None = None,
    device: str | None = None,
    trust_pickle: bool = False,
    progress: TextIO | None = None,
) -> ModelSummary:
    """Pass 2 for one model (see the module docstring)."""
    from biogpt.api import BioGPT
    from biogpt.checkpoint.pipeline import tokenizer_for

    task = task_for_model(spec.path, None)
    checkpoint = checkpoint_hash(spec.path)
    decoding = settings.as_record(task)
    settings_key = settings_hash(task, decoding)
    summary = ModelSummary(spec.name, task.name)
    began = time.monotonic()
    summary.removed = store.drop_deleted(spec.name)
    total = store.pending(spec.name, checkpoint, settings_key)
    if limit is not None:
        total = min(total, limit)
    if total == 0:
        summary.done = _count_done(store, paths, spec.name, checkpoint, settings_key)
        return summary
    model = BioGPT.from_pretrained(
        spec.path, dtype=settings.dtype, device=device, trust_pickle=trust_pickle
    ).eval()
    tokenizer = tokenizer_for(spec.path, model.config.vocab_size)
    meter = Progress(spec.name, total, progress)

    def rows() -> Iterator[Row]:
        """The documents to mine as prompts, sorted by length within each window."""
        records = _records(paths, None)
        taken = 0
        window = max(batch_size * WINDOW_BATCHES, 64)
        while chunk := list(itertools.islice(records, window)):
            wanted, done = store.to_mine(
                [r for r in chunk if isinstance(r, Record)], spec.name, checkpoint, settings_key
            )
            summary.done += done
            if limit is not None:
                wanted = wanted[: limit - taken]
            taken += len(wanted)
            prompts = []
            for record in wanted:
                prompt = encode_prompt(tokenizer, task, task.source_of_text(record.text))
                room = max_new_tokens_for(task, model, len(prompt))
                budget = min(
                    settings.max_new_tokens or room, model.config.max_positions - len(prompt)
                )
                if budget < 1:
                    raise BioGPTError(f"{record.where}: its prompt fills the model's positions")
                prompts.append(Row(record, prompt, budget))
            yield from sorted(prompts, key=lambda row: len(row.prompt))
            if limit is not None and taken >= limit:
                return

    finished: list[Result] = []
    for rows_done in greedy_rows(model, rows(), batch_size, tokenizer.eos_id):
        for row in rows_done:
            finished.append(_result(row, spec, task, checkpoint, decoding, settings_key, tokenizer))
        if len(finished) >= batch_size:
            _write(store, finished, summary, meter)
            finished = []
    _write(store, finished, summary, meter)
    meter.advance(0, final=True)
    summary.seconds = time.monotonic() - began
    return summary


def _count_done(store: Store, paths: Sequence[Path], model: str, checkpoint: str, key: str) -> int:
    """How many input records are done for `model` (for a run with nothing to do)."""
    done = 0
    records = (r for r in _records(paths, None) if isinstance(r, Record))
    while chunk := list(itertools.islice(records, 1000)):
        done += store.to_mine(chunk, model, checkpoint, key)[1]
    return done


def _write(store: Store, finished: list[Result], summary: ModelSummary, meter: Progress) -> None:
    store.record_batch(finished)
    summary.mined += len(finished)
    summary.relations += sum(len(r.relations) for r in finished)
    meter.advance(len(finished))


def _result(row, spec, task, checkpoint, decoding, settings_key, tokenizer) -> Result:
    record: Record = row.key
    raw = tokenizer.decode(row.tokens)
    source = task.source_of_text(record.text)
    parsed = task.parse(raw, Example(id=record.pmid, source=source, target="", gold=None))
    return Result(
        pmid=record.pmid,
        model=spec.name,
        checkpoint=checkpoint,
        task=task.name,
        template_version=task.template_version,
        decoding=decoding,
        raw=raw,
        structure=structure(parsed.value),
        unparseable=parsed.unparseable,
        confidence=row.logprob,
        span=None,  # every task here reads the whole document
        content_hash=record.content_hash,
        source=record.source,
        line=record.line,
        settings=settings_key,
        relations=tuple(relations_of(task.name, parsed.value, record.text)),
    )


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
) -> Summary:
    """Mine `inputs` (files or globs) with each of `models` (`NAME=PATH` or `PATH`, each a
    fine-tuned model with its task.json) into `store` (a SQLite file or a postgresql://
    URL); see the module docstring. `limit` caps the documents each model mines in this
    run. Returns what was done."""
    if batch_size < 1:
        raise BioGPTError(f"--batch-size must be positive, got {batch_size}")
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
        for spec in specs:
            done = mine_model(
                opened, spec, paths, settings, batch_size, limit, device, trust_pickle, progress
            )
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
