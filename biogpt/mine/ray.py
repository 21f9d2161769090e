"""`biogpt mine --ray ADDRESS`: the mining pass of each model on a Ray cluster, with the
`mine-ray` extra (Ray Data); the store and its ledger stay with the driver.

    summary = mine(["cdr=runs/bc5cdr/averaged"], ["pubmed24n*.xml.gz"], "mined.sqlite",
                   runner=RayRunner("auto", "mined.sqlite"))

For each model, with a staging folder (`STAGING`; one subfolder per model, checkpoint and
settings, `model_folder`):

1. result parts a killed run left there are ingested first (step 4), so that what it mined
   is kept and not sent again;
2. the driver puts the documents the ledger does not mark done (`pending_records`, the
   local run's rule) into Ray's object store as Arrow blocks: a document already done is
   never sent, and the driver holds only references;
3. Ray Data runs `BatchMiner` over those blocks as an actor pool (`map_batches` with a
   callable class: each actor loads the model once) and writes what it returns to the
   staging folder as Parquet parts (`write_parquet`). Each actor calls `Miner.results`,
   the per-batch function of the local run, so the answers are the local run's;
4. the driver ingests the parts one file at a time: a part's results whose document is
   still the winning version and not yet done (`Store.to_mine`) are written with their
   ledger rows in one transaction (`Store.record_batch`), then the file is deleted.

Exactly once, as in the local run: a part is deleted only after its transaction commits,
so a driver killed at any moment leaves each part either ingested or still there; ingested
again, its documents are done in the ledger and nothing is written. A part that a killed
write left truncated cannot be read: it is deleted, and its documents, never in the
ledger, are sent again, as are the documents in flight when a run dies.

Writing a part is I/O, so the write tasks take no CPU of Ray's budget and the actors may
hold every CPU. The documents are not read with Ray Data's file readers for the same
reason: their file-listing task asks for a CPU, which a full actor pool never gives back,
and the run waits forever (seen with Ray 2.60 on 2 CPUs). Pending documents beyond the
object store's memory spill to the head node's disk, as Ray does.

The staging folder and the models must be at the same path on every node (a shared
filesystem such as NFS), and biogpt must be installed on every node; on a one-machine
cluster (`--ray local:N`) any folder will do.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.mine.pipeline import (
    PROMPT_LOOKUP,
    Job,
    Miner,
    ModelSpec,
    ModelSummary,
    Plan,
    Progress,
    Settings,
    begin_model,
    pending_records,
    pending_total,
)
from biogpt.mine.relations import Relation
from biogpt.mine.sources import Record
from biogpt.mine.store import Result, Store, is_postgres

STAGING = ".ray"  # the default staging folder: the SQLite store's path + this
PART_ROWS = 1024  # documents per block sent at most: one Ray batch, one result part
BATCHES_PER_WORKER = 4  # blocks per actor at least, for small runs: the pool stays busy

# The columns of a block of documents sent (a `Record`) and of a result part (a `Result`;
# `decoding`, `structure` and `relations` as JSON).
RECORD_COLUMNS = (
    ("pmid", "string"), ("text", "string"), ("source", "string"), ("line", "int64"),
    ("version", "int64"), ("revised", "string"),
)  # fmt: skip
PART_COLUMNS = (
    ("pmid", "string"), ("model", "string"), ("checkpoint", "string"), ("task", "string"),
    ("template_version", "int64"), ("decoding", "string"), ("raw", "string"),
    ("structure", "string"), ("unparseable", "int64"), ("confidence", "float64"),
    ("span", "string"), ("content_hash", "string"), ("source", "string"), ("line", "int64"),
    ("settings", "string"), ("relations", "string"),
)  # fmt: skip


def _import(name: str) -> Any:
    """Ray or pyarrow, imported by name: both are optional and `mypy` must not need them."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise BioGPTError("--ray needs Ray Data (pip install 'biogpt[mine-ray]')") from None


def _schema(columns: tuple[tuple[str, str], ...]) -> Any:
    pa = _import("pyarrow")
    return pa.schema([(name, getattr(pa, kind)()) for name, kind in columns])


# --------------------------------------------------------------------------------------------
# Parquet rows
# --------------------------------------------------------------------------------------------


def records_table(records: list[Record]) -> Any:
    """Records as a pyarrow Table of `RECORD_COLUMNS`."""
    names = [name for name, _ in RECORD_COLUMNS]
    rows = [{name: getattr(r, name) for name in names} for r in records]
    return _import("pyarrow").Table.from_pylist(rows, schema=_schema(RECORD_COLUMNS))


def results_table(results: list[Result]) -> Any:
    """Results as a pyarrow Table of `PART_COLUMNS`."""
    rows = []
    for r in results:
        row = {name: getattr(r, name) for name, _ in PART_COLUMNS}
        row["decoding"] = json.dumps(r.decoding, sort_keys=True)
        row["structure"] = json.dumps(r.structure)
        row["relations"] = json.dumps([asdict(rel) for rel in r.relations])
        row["unparseable"] = int(r.unparseable)
        rows.append(row)
    return _import("pyarrow").Table.from_pylist(rows, schema=_schema(PART_COLUMNS))


def results_of(table: Any) -> list[Result]:
    """A result part's rows as Results (the inverse of `results_table`)."""
    results = []
    for row in table.to_pylist():
        row["decoding"] = json.loads(row["decoding"])
        row["structure"] = json.loads(row["structure"])
        row["relations"] = tuple(Relation(**rel) for rel in json.loads(row["relations"]))
        results.append(Result(**row))
    return results


@dataclass(frozen=True)
class StagedRecord(Record):
    """A document as a result part names it: PMID, file, line and content hash, without its
    text. That is all the ledger's rule reads (`Store.to_mine`)."""

    hashed: str = ""

    @property
    def content_hash(self) -> str:
        return self.hashed


# --------------------------------------------------------------------------------------------
# The actors
# --------------------------------------------------------------------------------------------


class BatchMiner:
    """An actor of the pool: loads the model once, then mines each batch of documents that
    Ray hands it (a pyarrow Table of `RECORD_COLUMNS`) into a table of results, with
    `Miner.results`."""

    def __init__(
        self,
        spec: ModelSpec,
        settings: Settings,
        checkpoint: str,
        batch_size: int,
        device: str | None,
        trust_pickle: bool,
        prompt_lookup: int = PROMPT_LOOKUP,
    ) -> None:
        plan = Plan.make(spec, settings, checkpoint)
        self.miner = Miner(plan, device, trust_pickle, prompt_lookup)
        self.batch_size = batch_size

    def __call__(self, batch: Any) -> Any:
        records = [Record(**row) for row in batch.to_pylist()]
        finished = self.miner.results(records, self.batch_size)
        return results_table([result for results in finished for result in results])


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass
class PartsIngested:
    """What `ingest_parts` did."""

    parts: int = 0
    results: int = 0  # written to the store
    relations: int = 0
    skipped: int = 0  # already done, or of a document version that no longer wins
    unreadable: int = 0  # truncated by a killed write: deleted, their documents sent again


def ingest_parts(store: Store, plan: Plan, folder: Path) -> PartsIngested:
    """Write the results of every part in `folder` that the ledger still wants, one
    transaction per part, deleting each part once its transaction has committed."""
    pq = _import("pyarrow.parquet")
    seen = PartsIngested()
    if not folder.is_dir():
        return seen
    for part in sorted(folder.glob("*.parquet")):
        try:
            results = results_of(pq.read_table(part))
        except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
            seen.unreadable += 1
            part.unlink()
            continue
        fresh = _unrecorded(store, plan, results)
        store.record_batch(fresh)
        part.unlink()  # after the commit: killed before this line, the part adds nothing again
        seen.parts += 1
        seen.results += len(fresh)
        seen.relations += sum(len(r.relations) for r in fresh)
        seen.skipped += len(results) - len(fresh)
    return seen


def _unrecorded(store: Store, plan: Plan, results: list[Result]) -> list[Result]:
    """Of a part's results, those of this plan whose document version still wins and that
    no ledger row marks done, each PMID once."""
    key = (plan.spec.name, plan.checkpoint, plan.settings_key)
    ours = [r for r in results if (r.model, r.checkpoint, r.settings) == key]
    staged = [
        StagedRecord(pmid=r.pmid, text="", source=r.source, line=r.line, hashed=r.content_hash)
        for r in ours
    ]
    wanted = {record.pmid for record in store.to_mine(staged, *key)[0]}
    fresh = []
    for result in ours:
        if result.pmid in wanted:
            wanted.discard(result.pmid)
            fresh.append(result)
    return fresh


def put_records(ray: Any, records: Iterable[Record], rows: int) -> list[Any]:
    """The records as Arrow blocks of `rows` rows in Ray's object store; their references."""
    records = iter(records)
    blocks = []
    while chunk := list(itertools.islice(records, rows)):
        blocks.append(ray.put(records_table(chunk)))
    return blocks


def staging_for(store: str | Path, staging: str | Path | None) -> Path:
    """The staging folder: `staging`, or the SQLite store's path + `STAGING`."""
    if staging is not None:
        return Path(staging)
    if is_postgres(str(store)):
        raise BioGPTError("--ray with a PostgreSQL --store needs --ray-staging (a shared folder)")
    return Path(f"{store}{STAGING}")


def check_address(address: str) -> str:
    """A one-line error for `local:N` whose N is not a positive count of CPUs."""
    kind, sep, cpus = address.partition(":")
    if kind == "local" and sep and not (cpus.isdigit() and int(cpus) > 0):
        raise BioGPTError(f"--ray {address}: expected local:N with N CPUs, e.g. local:4")
    return address


@contextmanager
def connected(address: str, quiet: bool) -> Iterator[Any]:
    """Ray, joined to the cluster at `address` ("auto", "host:port", "ray://host:port"), or to
    a new one-machine cluster ("local", "local:N" for N CPUs) that ends with the block. A
    process that called `ray.init` itself (a notebook, a test) keeps its own cluster."""
    ray = _import("ray")
    _import("ray.data")
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"log_to_driver": not quiet}
    if quiet:
        options["logging_level"] = logging.WARNING
    kind, _, cpus = address.partition(":")
    try:
        if kind == "local":
            # a cluster that lives for one run sends no usage statistics (Ray does unless told)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(num_cpus=int(cpus) if cpus else None, include_dashboard=False, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BioGPTError(f"--ray {address}: cannot join the cluster ({first})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class RayRunner:
    """Mines a model on a Ray cluster (a `ModelRunner`; see the module docstring).

    `workers` actors (default: one per `worker_cpus` CPUs of the cluster, or one per GPU
    with a CUDA `device`) each hold the model and take `worker_cpus` CPUs."""

    address: str
    store: str | Path
    staging: str | Path | None = None
    workers: int | None = None
    worker_cpus: float = 1.0

    def __post_init__(self) -> None:
        _import("ray")  # a missing extra is a one-line error before any work
        check_address(self.address)
        staging_for(self.store, self.staging)

    def __call__(self, job: Job, spec: ModelSpec) -> ModelSummary:
        began = time.monotonic()
        plan, summary = begin_model(job, spec)
        folder = model_folder(staging_for(self.store, self.staging), plan)
        left = ingest_parts(job.store, plan, folder / "parts")
        summary.recovered = left.results
        total = pending_total(job, plan, summary)
        if total == 0:
            _clear(folder)
            summary.seconds = time.monotonic() - began
            return summary
        meter = Progress(spec.name, total, job.progress)
        with connected(self.address, quiet=job.progress is None) as ray:
            workers = self._workers(ray, job.device)
            rows = max(job.batch_size, math.ceil(total / (workers * BATCHES_PER_WORKER)))
            rows = min(rows, PART_ROWS)
            blocks = put_records(ray, pending_records(job, plan, summary), rows)
            if blocks:
                self._run(ray, job, plan, blocks, folder / "parts", workers, rows)
        mined = ingest_parts(job.store, plan, folder / "parts")
        summary.mined += mined.results
        summary.relations += mined.relations
        meter.advance(mined.results, final=True)  # Ray Data showed the progress until now
        _clear(folder)
        summary.seconds = time.monotonic() - began
        return summary

    def _workers(self, ray: Any, device: str | None) -> int:
        if self.workers is not None:
            return self.workers
        resources = ray.cluster_resources()
        if device is not None and device.startswith("cuda"):
            return max(1, int(resources.get("GPU", 1)))
        return max(1, int(resources.get("CPU", 1) // self.worker_cpus))

    def _run(
        self,
        ray: Any,
        job: Job,
        plan: Plan,
        blocks: list[Any],
        parts: Path,
        workers: int,
        rows: int,
    ) -> None:
        """The blocks through the actor pool into Parquet parts (`rows` documents a batch)."""
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = job.progress is not None
        logger = logging.getLogger("ray.data")  # its INFO lines are progress too
        level = logger.level
        if job.progress is None:
            logger.setLevel(logging.WARNING)
        gpus = 1 if job.device is not None and job.device.startswith("cuda") else None
        mined = ray.data.from_arrow_refs(blocks).map_batches(
            BatchMiner,
            fn_constructor_kwargs=dict(
                spec=plan.spec,
                settings=plan.settings,
                checkpoint=plan.checkpoint,
                batch_size=job.batch_size,
                device=job.device,
                trust_pickle=job.trust_pickle,
                prompt_lookup=job.prompt_lookup,
            ),
            batch_size=rows,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(blocks))),
            num_cpus=self.worker_cpus,
            num_gpus=gpus,
        )
        try:
            mined.write_parquet(str(parts), ray_remote_args={"num_cpus": 0})
        except Exception as err:
            message = _user_error(err)
            if message is None:
                raise
            raise BioGPTError(message) from None
        finally:
            logger.setLevel(level)


def _clear(folder: Path) -> None:
    """Remove a model's staging folder, and the staging folder once it holds no other."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()


def model_folder(staging: Path, plan: Plan) -> Path:
    """The plan's subfolder of `staging`: one per model name, checkpoint and settings, so
    that parts left by a run with another checkpoint or settings are never taken in."""
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in plan.spec.name)[-40:]
    return staging / f"{name}-{plan.checkpoint[:12]}-{plan.settings_key}"


# The last line of a traceback of one of the package's exceptions: "biogpt.errors.X: message"
USER_ERROR = re.compile(r"^biogpt\.[\w.]+: (.+)$", re.MULTILINE)


def _user_error(err: BaseException) -> str | None:
    """The message of a BioGPTError an actor raised. Ray Data hands the driver its own
    exception with the actor's traceback as text, the original's `__cause__` lost on the
    way, so the message is read back from that text."""
    found = USER_ERROR.findall(str(err))
    return found[-1] if found else None
