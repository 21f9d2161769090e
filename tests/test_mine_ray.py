"""`biogpt mine --ray`: on a local Ray cluster of 2 CPU workers started here, the Ray run
gives the rows of the local run; documents already done are never sent to Ray; a result
part ingested twice adds nothing; and the parts a killed run left are ingested or redone,
never duplicated.

Skipped where Ray Data is not installed (the `mine-ray` extra).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_mine import cli, corpus_rows, quiet_mine, snapshot, tiny_task_model, write_jsonl

import biogpt.mine.ray as on_ray
from biogpt.errors import BioGPTError
from biogpt.mine.pipeline import ModelSpec, Plan, Settings, Summary, ingest
from biogpt.mine.ray import BatchMiner, RayRunner, ingest_parts, model_folder, records_table
from biogpt.mine.sources import Record, read_events
from biogpt.mine.store import open_store

WHY = "the Ray run needs Ray Data (pip install 'biogpt[mine-ray]')"
ray = pytest.importorskip("ray", reason=WHY)
pytest.importorskip("ray.data", reason=WHY)
pq = pytest.importorskip("pyarrow.parquet", reason=WHY)  # Ray Data brings pyarrow

# Ray Data's own settings warn of their renames when it starts
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

DOCUMENTS = 100
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A one-machine Ray cluster of 2 CPUs for this module, its address; `RayRunner` in
    this process joins it."""
    # Not under pytest's tmp_path: Ray's unix sockets live in its temp folder, and a socket's
    # path may not pass 107 bytes.
    folder = tempfile.mkdtemp(prefix="biogpt-ray-")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")  # a test's cluster sends nothing anywhere
        ray.init(
            num_cpus=2, include_dashboard=False, _temp_dir=folder, log_to_driver=False,
            logging_level=logging.WARNING,
        )  # fmt: skip
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_task_model(tmp_path_factory.mktemp("tiny") / "cdr")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "a.jsonl", corpus_rows(DOCUMENTS))


@pytest.fixture(scope="module")
def local_store(model, corpus, tmp_path_factory) -> Path:
    """The local run's store: what every Ray run must give."""
    store = tmp_path_factory.mktemp("local") / "mined.sqlite"
    assert quiet_mine([f"cdr={model}"], [str(corpus)], store).models[0].mined == DOCUMENTS
    return store


def ray_mine(model: Path, inputs: list[Path], store: Path) -> Summary:
    runner = RayRunner("auto", store)
    return quiet_mine([f"cdr={model}"], [str(p) for p in inputs], store, runner=runner)


def records_of(path: Path) -> list[Record]:
    return [e for e in read_events([path.resolve()]) if isinstance(e, Record)]


def test_the_ray_run_gives_the_local_rows_and_sends_only_new_documents(
    cluster, model, corpus, local_store, tmp_path, monkeypatch, capsys
) -> None:
    store = tmp_path / "mined.sqlite"
    summary = ray_mine(model, [corpus], store)
    assert (summary.models[0].mined, summary.models[0].done) == (DOCUMENTS, 0)
    assert snapshot(store) == snapshot(local_store)
    assert not (tmp_path / "mined.sqlite.ray").exists()  # the staging folder is cleared

    def no_ray(address: str, quiet: bool) -> None:
        raise AssertionError("a run with nothing to do joined the cluster")

    with monkeypatch.context() as patched:
        patched.setattr(on_ray, "connected", no_ray)
        again = ray_mine(model, [corpus], store)
    assert (again.models[0].mined, again.models[0].done) == (0, DOCUMENTS)
    assert snapshot(store) == snapshot(local_store)

    sent: list[int] = []  # documents put in Ray's object store
    records_table = on_ray.records_table

    def counting(records: list[Record]) -> object:
        sent.append(len(records))
        return records_table(records)

    monkeypatch.setattr(on_ray, "records_table", counting)
    more = write_jsonl(tmp_path / "b.jsonl", corpus_rows(10, start=DOCUMENTS - 4))
    cli("mine", "--model", f"cdr={model}", "--input", corpus, more, "--store", store,
        "--max-new-tokens", str(NEW_TOKENS), "--ray", "auto", "--ray-workers", "2", "--quiet")  # fmt: skip
    out = capsys.readouterr().out
    assert "model cdr (bc5cdr): mined 6, skipped as done 100" in out
    assert sum(sent) == 6 and len(snapshot(store)["results"]) == DOCUMENTS + 6


def test_a_part_ingested_twice_adds_nothing(model, corpus, tmp_path) -> None:
    store = tmp_path / "mined.sqlite"
    plan = Plan.make(ModelSpec("cdr", str(model)), Settings(NEW_TOKENS, "fp32"))
    # what an actor returns for 20 documents, without Ray: the same callable class
    actor = BatchMiner(plan.spec, plan.settings, plan.checkpoint, 8, None, False)
    part = actor(records_table(records_of(corpus)[:20]))
    folder = tmp_path / "parts"
    folder.mkdir()
    with open_store(store) as opened:
        ingest(opened, [corpus.resolve()], Summary())
        pq.write_table(part, folder / "a.parquet")
        first = ingest_parts(opened, plan, folder)
        assert (first.parts, first.results, first.skipped) == (1, 20, 0)
        assert not list(folder.iterdir())  # deleted once its transaction committed
    before = snapshot(store)
    with open_store(store) as opened:
        stamps = opened.fetchall("SELECT pmid, mined_at FROM results ORDER BY pmid")
        pq.write_table(part, folder / "a.parquet")
        pq.write_table(part, folder / "b.parquet")  # the same rows twice more
        again = ingest_parts(opened, plan, folder)
        assert (again.parts, again.results, again.skipped) == (2, 0, 40)
        assert opened.fetchall("SELECT pmid, mined_at FROM results ORDER BY pmid") == stamps
    assert snapshot(store) == before and len(before["results"]) == 20


def test_a_killed_runs_parts_are_ingested_or_redone_never_duplicated(
    cluster, model, corpus, local_store, tmp_path
) -> None:
    store = tmp_path / "mined.sqlite"
    plan = Plan.make(ModelSpec("cdr", str(model)), Settings(NEW_TOKENS, "fp32"))
    actor = BatchMiner(plan.spec, plan.settings, plan.checkpoint, 8, None, False)
    records = records_of(corpus)
    # A killed run left two whole parts and one cut short by the kill.
    parts = model_folder(tmp_path / "mined.sqlite.ray", plan) / "parts"
    parts.mkdir(parents=True)
    pq.write_table(actor(records_table(records[:15])), parts / "0.parquet")
    pq.write_table(actor(records_table(records[10:30])), parts / "1.parquet")  # overlaps 0
    pq.write_table(actor(records_table(records[30:40])), parts / "2.parquet")
    cut = (parts / "2.parquet").read_bytes()
    (parts / "2.parquet").write_bytes(cut[: len(cut) // 2])

    summary = ray_mine(model, [corpus], store)
    assert summary.models[0].recovered == 30  # 0 and 1, each document once
    assert summary.models[0].mined == DOCUMENTS - 30  # 2's documents were sent again
    assert snapshot(store) == snapshot(local_store)
    assert not parts.exists()


def test_ray_refusals_are_one_line(model, corpus, tmp_path) -> None:
    with pytest.raises(BioGPTError, match="needs --ray-staging"):
        RayRunner("auto", "postgresql://u@localhost/db")
    with pytest.raises(BioGPTError, match="expected local:N"):
        RayRunner("local:none", tmp_path / "s.sqlite")
    with pytest.raises(BioGPTError, match="--ray-workers needs --ray"):
        cli("mine", "--model", str(model), "--input", corpus, "--ray-workers", "2")


# A driver in its own process, on the module's cluster: `mine` with the Ray runner.
RAY_MINE_IN_A_PROCESS = (
    "import sys; from biogpt.mine.pipeline import mine; from biogpt.mine.ray import RayRunner; "
    f"mine([sys.argv[1]], [sys.argv[2]], sys.argv[3], max_new_tokens={NEW_TOKENS}, "
    "progress=None, runner=RayRunner(sys.argv[4], sys.argv[3]))"
)


@pytest.mark.slow
def test_a_ray_run_killed_with_sigkill_resumes_to_the_local_rows(
    cluster, model, corpus, local_store, tmp_path
) -> None:
    store = tmp_path / "mined.sqlite"
    staging = tmp_path / "mined.sqlite.ray"
    argv = [sys.executable, "-c", RAY_MINE_IN_A_PROCESS, f"cdr={model}", str(corpus), str(store)]
    driver = subprocess.Popen([*argv, cluster], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not any(readable(p) for p in staging.glob("*/parts/*.parquet")):
            assert driver.poll() is None, "the driver ended before writing a part"
            assert time.monotonic() < deadline, "no part was written in time"
            time.sleep(0.05)
        driver.kill()  # SIGKILL, with the Ray run half done (Ray ends the driver's actors)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.wait()
    with open_store(store) as opened:
        assert opened.counts()["results"] == 0  # the driver ingests once Ray is done

    summary = ray_mine(model, [corpus], store)
    recovered, mined = summary.models[0].recovered, summary.models[0].mined
    assert recovered > 0 and recovered + mined == DOCUMENTS
    assert snapshot(store) == snapshot(local_store)


def readable(part: Path) -> bool:
    try:
        pq.read_table(part)
    except (OSError, ValueError):
        return False
    return True
