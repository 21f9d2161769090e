"""Where mining keeps what it saw and what it found: an embedded SQLite file, or a
PostgreSQL database for a team (`postgresql://...`, with the `mine-pg` extra: psycopg 3).

One schema on both, its version in `biogpt_mine_schema`:

    documents  pmid -> the winning version of each document: content hash, MEDLINE version
               and revision date, the file and line it came from, deleted or not
    ledger     (pmid, model) -> the document version, checkpoint and settings it was mined
               with: what is done
    results    (pmid, model) -> one answer with its provenance: checkpoint hash, task and
               template version, decoding settings, raw text, parsed structure (JSON),
               confidence (the greedy answer's log-probability), span, time
    relations  (pmid, model, index) -> one relation of the answer (`biogpt.mine.relations`)

Exactly once. `record_batch` writes a batch's results, relations and ledger rows in one
transaction, so a process killed at any moment (SIGKILL too) leaves either all of a batch
or none of it; a resumed run redoes only what no committed ledger row covers, and every
write is an upsert on the table's key, so a batch written twice leaves one row per key.
SQLite runs in WAL mode with `synchronous=FULL`: a committed batch survives the process and
the machine.

Which version of a document wins (`ingest`): records arrive in input order; a record
replaces the stored one unless it is older, by MEDLINE's (PMID version, DateRevised), so
update files given after the baseline win, and a rerun of the baseline after them changes
nothing; between records of equal age the later one wins (a changed JSONL abstract). A
deletion marks the PMID deleted (its results are removed when a model next runs), and only
a strictly newer record brings it back. A document is done for a model when its ledger row
has the document's current content hash, the model's checkpoint hash and the run's
settings; a changed abstract, checkpoint or setting is mined again, replacing the old row.

Only one `biogpt mine` should write to a store at a time.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.mine.relations import Relation
from biogpt.mine.sources import Deletion, Record

SCHEMA_VERSION = 1
SCHEMA_TABLE = "biogpt_mine_schema"
LOOKUP_CHUNK = 500  # PMIDs per `IN (...)` look-up: far below both databases' limits

# {real}: SQLite's REAL is 8 bytes, PostgreSQL's is 4; DOUBLE PRECISION is its 8.
DDL = (
    f"CREATE TABLE {SCHEMA_TABLE} (version INTEGER NOT NULL, created_at TEXT NOT NULL)",
    """CREATE TABLE documents (
        pmid TEXT PRIMARY KEY, content_hash TEXT NOT NULL, version INTEGER NOT NULL,
        revised TEXT NOT NULL, source TEXT NOT NULL, line INTEGER NOT NULL,
        deleted INTEGER NOT NULL, seen_at TEXT NOT NULL)""",
    """CREATE TABLE ledger (
        pmid TEXT NOT NULL, model TEXT NOT NULL, content_hash TEXT NOT NULL,
        checkpoint TEXT NOT NULL, settings TEXT NOT NULL, done_at TEXT NOT NULL,
        PRIMARY KEY (pmid, model))""",
    """CREATE TABLE results (
        pmid TEXT NOT NULL, model TEXT NOT NULL, checkpoint TEXT NOT NULL, task TEXT NOT NULL,
        template_version INTEGER NOT NULL, decoding TEXT NOT NULL, raw TEXT NOT NULL,
        structure TEXT NOT NULL, unparseable INTEGER NOT NULL, confidence {real} NOT NULL,
        span TEXT, content_hash TEXT NOT NULL, source TEXT NOT NULL, line INTEGER NOT NULL,
        mined_at TEXT NOT NULL, PRIMARY KEY (pmid, model))""",
    """CREATE TABLE relations (
        pmid TEXT NOT NULL, model TEXT NOT NULL, idx INTEGER NOT NULL, head TEXT NOT NULL,
        tail TEXT NOT NULL, relation TEXT NOT NULL, head_type TEXT, tail_type TEXT,
        biored TEXT, pubtator TEXT, sentence TEXT, PRIMARY KEY (pmid, model, idx))""",
    "CREATE INDEX relations_head ON relations (head)",
    "CREATE INDEX relations_tail ON relations (tail)",
)
TABLES = ("documents", "ledger", "results", "relations")

RESULT_FIELDS = (
    "pmid", "model", "checkpoint", "task", "template_version", "decoding", "raw", "structure",
    "unparseable", "confidence", "span", "content_hash", "source", "line", "mined_at",
)  # fmt: skip
RELATION_FIELDS = (
    "head", "tail", "relation", "head_type", "tail_type", "biored", "pubtator", "sentence",
)  # fmt: skip


def now() -> str:
    """The time as ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Result:
    """One mined answer with its provenance (a row of `results`) and its relations."""

    pmid: str
    model: str
    checkpoint: str
    task: str
    template_version: int
    decoding: dict[str, Any]
    raw: str
    structure: Any
    unparseable: int
    confidence: float
    span: str | None
    content_hash: str
    source: str
    line: int
    settings: str  # the hash of task + template + decoding that the ledger compares
    relations: tuple[Relation, ...] = ()


@dataclass
class Ingested:
    """What `ingest` saw: records and deletions read, and how the documents changed."""

    records: int = 0
    deletions: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    older: int = 0  # records older than the stored version, ignored


@dataclass
class _Stored:
    content_hash: str
    version: int
    revised: str
    source: str
    line: int
    deleted: bool


class Store:
    """A mining store; `open_store(location)` makes one. Use it as a context manager."""

    def __init__(self, connection: Any, location: str, postgres: bool) -> None:
        self.db = connection
        self.location = location
        self.postgres = postgres
        self._check_schema()

    # --- SQL on either database -----------------------------------------------------------

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s") if self.postgres else query

    def execute(self, query: str, params: Sequence[Any] = ()) -> Any:
        cursor = self.db.cursor()
        cursor.execute(self._sql(query), tuple(params))
        return cursor

    def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = [tuple(r) for r in rows]
        if rows:
            self.db.cursor().executemany(self._sql(query), rows)

    def fetchall(self, query: str, params: Sequence[Any] = ()) -> list[tuple]:
        return list(self.execute(query, params).fetchall())

    def begin(self) -> None:
        # SQLite: IMMEDIATE takes the write lock now, not half-way through the batch.
        # psycopg opens a transaction by itself at the first statement.
        if not self.postgres:
            self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.db.commit()

    def rollback(self) -> None:
        self.db.rollback()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Schema ---------------------------------------------------------------------------

    def _tables(self) -> list[str]:
        if self.postgres:
            rows = self.fetchall(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        else:
            rows = self.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        return sorted(r[0] for r in rows)

    def _check_schema(self) -> None:
        """Create the schema in an empty database; refuse one that is not ours, or is of a
        newer schema than this package writes."""
        tables = self._tables()
        if not tables:
            self.begin()
            real = "DOUBLE PRECISION" if self.postgres else "REAL"
            for statement in DDL:
                self.execute(statement.replace("{real}", real))
            self.execute(
                f"INSERT INTO {SCHEMA_TABLE} (version, created_at) VALUES (?, ?)",
                (SCHEMA_VERSION, now()),
            )
            self.commit()
            return
        if SCHEMA_TABLE not in tables:
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise BioGPTError(
                f"--store {self.location}: not a biogpt mine store (it holds tables {shown})"
            )
        rows = self.fetchall(f"SELECT version FROM {SCHEMA_TABLE}")
        self.commit()
        version = rows[0][0] if rows else None
        if not isinstance(version, int):
            raise BioGPTError(f"--store {self.location}: its schema version is unreadable")
        if version > SCHEMA_VERSION:
            raise BioGPTError(
                f"--store {self.location}: schema version {version} is newer than this "
                f"package's {SCHEMA_VERSION}; upgrade biogpt to use it"
            )
        missing = [t for t in TABLES if t not in tables]
        if missing:
            raise BioGPTError(f"--store {self.location}: a damaged store (no table {missing[0]})")

    # --- Documents ------------------------------------------------------------------------

    def _stored(self, pmids: Sequence[str]) -> dict[str, _Stored]:
        found: dict[str, _Stored] = {}
        for start in range(0, len(pmids), LOOKUP_CHUNK):
            chunk = list(dict.fromkeys(pmids[start : start + LOOKUP_CHUNK]))
            marks = ",".join("?" * len(chunk))
            for row in self.fetchall(
                "SELECT pmid, content_hash, version, revised, source, line, deleted "
                f"FROM documents WHERE pmid IN ({marks})",
                chunk,
            ):
                found[row[0]] = _Stored(row[1], row[2], row[3], row[4], row[5], bool(row[6]))
        return found

    def ingest(self, events: Sequence[Record | Deletion], seen: Ingested) -> None:
        """Apply a chunk of records and deletions, in order, to `documents` in one
        transaction (the rules in the module docstring); counts go to `seen`."""
        stored = self._stored([e.pmid for e in events])
        touched: dict[str, _Stored] = {}
        for event in events:
            old = stored.get(event.pmid)
            if isinstance(event, Deletion):
                seen.deletions += 1
                new = _Stored("", 0, "", event.source, event.line, True)
                if old is not None:
                    new = _Stored(old.content_hash, old.version, old.revised, event.source,
                                  event.line, True)  # fmt: skip
            else:
                seen.records += 1
                new = _Stored(
                    event.content_hash, event.version, event.revised, event.source,
                    event.line, False,
                )  # fmt: skip
                if old is not None:
                    age, old_age = (event.version, event.revised), (old.version, old.revised)
                    if age < old_age or (old.deleted and age <= old_age):
                        seen.older += 1
                        continue
                    if old.deleted or old.content_hash != event.content_hash:
                        seen.changed += 1
                    else:
                        seen.unchanged += 1
                else:
                    seen.new += 1
            stored[event.pmid] = touched[event.pmid] = new
        self.begin()
        self.executemany(
            "INSERT INTO documents (pmid, content_hash, version, revised, source, line, "
            "deleted, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pmid) DO UPDATE "
            "SET content_hash = excluded.content_hash, version = excluded.version, "
            "revised = excluded.revised, source = excluded.source, line = excluded.line, "
            "deleted = excluded.deleted, seen_at = excluded.seen_at",
            [
                (pmid, s.content_hash, s.version, s.revised, s.source, s.line, int(s.deleted),
                 now())
                for pmid, s in touched.items()
            ],
        )  # fmt: skip
        self.commit()

    def to_mine(
        self, records: Sequence[Record], model: str, checkpoint: str, settings: str
    ) -> tuple[list[Record], int]:
        """Of `records`, those to mine for `model`: each is its document's winning version
        (the same file and line) and no ledger row says it is done with this checkpoint
        and settings. Also how many were skipped as done."""
        pmids = [r.pmid for r in records]
        state: dict[str, tuple] = {}
        for start in range(0, len(pmids), LOOKUP_CHUNK):
            chunk = list(dict.fromkeys(pmids[start : start + LOOKUP_CHUNK]))
            marks = ",".join("?" * len(chunk))
            for row in self.fetchall(
                "SELECT d.pmid, d.content_hash, d.source, d.line, d.deleted, l.content_hash, "
                "l.checkpoint, l.settings FROM documents d LEFT JOIN ledger l "
                f"ON l.pmid = d.pmid AND l.model = ? WHERE d.pmid IN ({marks})",
                [model, *chunk],
            ):
                state[row[0]] = row[1:]
        self.commit()
        wanted, done = [], 0
        for record in records:
            known = state.get(record.pmid)
            if known is None:
                continue
            content_hash, source, line, deleted, done_hash, done_checkpoint, done_settings = known
            if deleted or (source, line, content_hash) != (
                record.source,
                record.line,
                record.content_hash,
            ):
                continue  # another record of this PMID wins
            if (done_hash, done_checkpoint, done_settings) == (content_hash, checkpoint, settings):
                done += 1
                continue
            wanted.append(record)
        return wanted, done

    def pending(self, model: str, checkpoint: str, settings: str) -> int:
        """How many live documents are not done for `model` (for the time-left estimate)."""
        (count,) = self.fetchall(
            "SELECT COUNT(*) FROM documents d LEFT JOIN ledger l "
            "ON l.pmid = d.pmid AND l.model = ? WHERE d.deleted = 0 AND (l.pmid IS NULL "
            "OR l.content_hash <> d.content_hash OR l.checkpoint <> ? OR l.settings <> ?)",
            (model, checkpoint, settings),
        )[0]
        self.commit()
        return int(count)

    def drop_deleted(self, model: str) -> int:
        """Remove `model`'s results, relations and ledger rows of deleted documents, in one
        transaction; how many results went."""
        self.begin()
        gone = "pmid IN (SELECT pmid FROM documents WHERE deleted = 1) AND model = ?"
        count = self.fetchall(f"SELECT COUNT(*) FROM results WHERE {gone}", (model,))[0][0]
        for table in ("relations", "results", "ledger"):
            self.execute(f"DELETE FROM {table} WHERE {gone}", (model,))
        self.commit()
        return int(count)

    # --- Results --------------------------------------------------------------------------

    def record_batch(self, results: Sequence[Result]) -> None:
        """Write the results, their relations and their ledger rows in one transaction."""
        if not results:
            return
        self.begin()
        try:
            stamp = now()
            keys = [(r.pmid, r.model) for r in results]
            self.executemany("DELETE FROM relations WHERE pmid = ? AND model = ?", keys)
            columns = ", ".join(RESULT_FIELDS)
            updates = ", ".join(f"{c} = excluded.{c}" for c in RESULT_FIELDS[2:])
            self.executemany(
                f"INSERT INTO results ({columns}) VALUES ({', '.join('?' * len(RESULT_FIELDS))}) "
                f"ON CONFLICT (pmid, model) DO UPDATE SET {updates}",
                [
                    (r.pmid, r.model, r.checkpoint, r.task, r.template_version,
                     json.dumps(r.decoding, sort_keys=True), r.raw,
                     json.dumps(r.structure, ensure_ascii=False), r.unparseable, r.confidence,
                     r.span, r.content_hash, r.source, r.line, stamp)
                    for r in results
                ],
            )  # fmt: skip
            self.executemany(
                "INSERT INTO relations (pmid, model, idx, " + ", ".join(RELATION_FIELDS) + ") "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.pmid, r.model, k, *(getattr(rel, f) for f in RELATION_FIELDS))
                    for r in results
                    for k, rel in enumerate(r.relations)
                ],
            )
            self.executemany(
                "INSERT INTO ledger (pmid, model, content_hash, checkpoint, settings, done_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (pmid, model) DO UPDATE SET "
                "content_hash = excluded.content_hash, checkpoint = excluded.checkpoint, "
                "settings = excluded.settings, done_at = excluded.done_at",
                [
                    (r.pmid, r.model, r.content_hash, r.checkpoint, r.settings, stamp)
                    for r in results
                ],
            )
            self.commit()
        except BaseException:
            self.rollback()
            raise

    # --- Reading back ---------------------------------------------------------------------

    def results(self, model: str | None = None, pmid: str | None = None) -> Iterator[dict]:
        """Every result as a dict of `RESULT_FIELDS` (`decoding` and `structure` parsed),
        ordered by model and PMID, streamed."""
        where, params = _filters(model=model, pmid=pmid)
        cursor = self.execute(
            f"SELECT {', '.join(RESULT_FIELDS)} FROM results{where} ORDER BY model, pmid",
            params,
        )
        for row in cursor:
            record = dict(zip(RESULT_FIELDS, row, strict=True))
            record["decoding"] = json.loads(record["decoding"])
            record["structure"] = json.loads(record["structure"])
            yield record
        self.commit()

    def relations(self, model: str | None = None, pmid: str | None = None) -> Iterator[dict]:
        """Every relation with its result's provenance, ordered by model, PMID and index."""
        where, params = _filters(prefix="r.", model=model, pmid=pmid)
        provenance = ("task", "checkpoint", "template_version", "confidence", "mined_at")
        cursor = self.execute(
            "SELECT r.pmid, r.model, r.idx, "
            + ", ".join(f"r.{f}" for f in RELATION_FIELDS)
            + ", "
            + ", ".join(f"s.{f}" for f in provenance)
            + " FROM relations r JOIN results s ON s.pmid = r.pmid AND s.model = r.model"
            + where
            + " ORDER BY r.model, r.pmid, r.idx",
            params,
        )
        names = ("pmid", "model", "index", *RELATION_FIELDS, *provenance)
        for row in cursor:
            yield dict(zip(names, row, strict=True))
        self.commit()

    def entities(self) -> list[tuple[str, str | None]]:
        """Every distinct (name, type) that a relation names, sorted."""
        rows = self.fetchall(
            "SELECT head, head_type FROM relations UNION SELECT tail, tail_type FROM relations"
        )
        self.commit()
        return sorted(set(rows), key=lambda r: (r[1] or "", r[0]))

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        out = {t: int(self.fetchall(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in TABLES}
        self.commit()
        return out


def _filters(prefix: str = "", **values: str | None) -> tuple[str, list[str]]:
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return "", []
    return " WHERE " + " AND ".join(f"{prefix}{k} = ?" for k in given), list(given.values())


def is_postgres(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def open_store(location: str | Path) -> Store:
    """The store at `location`: a SQLite file (made if missing) or a `postgresql://` URL.
    A file or database that is not a store of ours, or of a newer schema, is a one-line
    error."""
    location = str(location)
    if is_postgres(location):
        try:
            import psycopg
        except ImportError:
            raise BioGPTError(
                f"--store {location}: PostgreSQL needs psycopg 3 (pip install 'biogpt[mine-pg]')"
            ) from None
        try:
            connection = psycopg.connect(location)
        except psycopg.Error as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BioGPTError(f"--store {location}: cannot connect ({first})") from None
        return Store(connection, location, postgres=True)
    path = Path(location)
    if path.is_dir():
        raise BioGPTError(f"--store {location}: is a directory")
    if not path.parent.is_dir():
        raise BioGPTError(f"--store {location}: no such directory {path.parent}")
    try:
        # isolation_level=None: transactions are begun and committed here, explicitly
        embedded = sqlite3.connect(path, isolation_level=None, timeout=60)
        embedded.execute("PRAGMA journal_mode=WAL")
        embedded.execute("PRAGMA synchronous=FULL")
        return Store(embedded, location, postgres=False)
    except sqlite3.DatabaseError as err:
        raise BioGPTError(f"--store {location}: not a biogpt mine store ({err})") from None
