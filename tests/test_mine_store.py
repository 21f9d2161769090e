"""The mining store: a database that is not ours, or of a newer schema, is refused in one
line; a batch is written whole or not at all; and PostgreSQL (a throwaway cluster from
Debian's package, on a unix socket in a temporary folder) holds the same rows as SQLite."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_mine import corpus_rows, quiet_mine, snapshot, tiny_task_model, write_jsonl

from biogpt.errors import BioGPTError
from biogpt.mine.store import SCHEMA_TABLE, Result, open_store

POSTGRES_BIN = Path("/usr/lib/postgresql")


def test_a_database_that_is_not_a_store_is_refused(tmp_path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(BioGPTError, match=r"not a biogpt mine store \(it holds tables people"):
        open_store(other)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is no database at all" * 100)
    with pytest.raises(BioGPTError, match="not a biogpt mine store"):
        open_store(junk)


def test_a_store_of_a_newer_schema_is_refused(tmp_path) -> None:
    path = tmp_path / "s.sqlite"
    open_store(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE {SCHEMA_TABLE} SET version = 99")
    with pytest.raises(BioGPTError, match="schema version 99 is newer"):
        open_store(path)


def result(pmid: str, **changes) -> Result:
    fields = dict(
        pmid=pmid, model="m", checkpoint="c", task="bc5cdr", template_version=1,
        decoding={"strategy": "greedy"}, raw="x", structure=[], unparseable=1, confidence=-1.0,
        span=None, content_hash="h", source="f", line=1, settings="s",
    )  # fmt: skip
    return Result(**{**fields, **changes})  # type: ignore[arg-type]


def test_a_batch_is_written_whole_or_not_at_all(tmp_path) -> None:
    with open_store(tmp_path / "s.sqlite") as store:
        store.record_batch([result("1"), result("2")])
        store.record_batch([result("1", raw="again")])  # an upsert: still one row per key
        with pytest.raises(sqlite3.Error):
            # the second row fails (NOT NULL), after the first was written in the transaction
            store.record_batch([result("3"), result("4", raw=None)])
        assert store.counts() == {"documents": 0, "ledger": 2, "results": 2, "relations": 0}
        assert [r["raw"] for r in store.results()] == ["again", "x"]


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The folder of Debian's newest PostgreSQL server binaries, if installed."""
    found = sorted(POSTGRES_BIN.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def postgres_url(tmp_path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster in tmp_path, listening on a unix socket only; its URL."""
    pytest.importorskip("psycopg", reason="the PostgreSQL store needs psycopg 3 (mine-pg extra)")
    binaries = postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL's server is not installed (apt-get install postgresql)")
    # Not under tmp_path: pytest's folders are private to their user, and as root the
    # cluster must belong to another one (initdb refuses to run as root): `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="biogpt-test-pg-"))
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (folder, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = dict(check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "postgres", "--no-sync"], **run)  # type: ignore[call-overload]  # fmt: skip
    options = f"-p {port} -k {sockets} -c listen_addresses='' -c fsync=off"
    subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-o", options,
                    "-w", "-l", str(folder / "log"), "start"], **run)  # type: ignore[call-overload]  # fmt: skip
    try:
        yield f"postgresql://postgres@/postgres?host={sockets}&port={port}"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=120)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def test_postgres_holds_the_same_rows_as_sqlite(postgres_url, tmp_path) -> None:
    model = tiny_task_model(tmp_path / "cdr")
    first = write_jsonl(tmp_path / "a.jsonl", corpus_rows(30), {4: "{bad"})
    second = write_jsonl(tmp_path / "b.jsonl", corpus_rows(10, start=25))
    embedded = tmp_path / "mined.sqlite"
    for store in (embedded, postgres_url):
        summary = quiet_mine([f"cdr={model}"], [str(first)], store)
        assert summary.models[0].mined == 30 and len(summary.malformed) == 1
        assert quiet_mine([f"cdr={model}"], [str(first), str(second)], store).models[0].mined == 5
        assert quiet_mine([f"cdr={model}"], [str(second)], store).models[0].mined == 0
    assert snapshot(postgres_url) == snapshot(embedded)
    assert len(snapshot(embedded)["results"]) == 35


def test_postgres_refuses_a_database_that_is_not_a_store(postgres_url) -> None:
    import psycopg

    with psycopg.connect(postgres_url) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(BioGPTError, match="not a biogpt mine store"):
        open_store(postgres_url)
