"""`biogpt mine`: answers equal `biogpt predict`'s, each document mined once per model with
its provenance, a run killed with SIGKILL resumes to the store of an uninterrupted run,
reruns and new files add only what is new, bad records are counted and skipped; and the
store read back by `query` and `export`.

Two task models: a tiny random one with the released vocabulary and nine prompt-token
rows (fast, with varied answers), and `mini` taught to answer one relation for `TEXT`
(a few Adam steps), so that relations, queries and graph exports have something in them.
"""

from __future__ import annotations

import copy
import csv
import gzip
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from biogpt import BioGPT, tasks
from biogpt.cache import KVCache
from biogpt.checkpoint.pipeline import tokenizer_for
from biogpt.cli.mine import register
from biogpt.config import ModelConfig
from biogpt.cpu import gemv
from biogpt.cpu.threads import ENVIRONMENT
from biogpt.decoding.search import generate
from biogpt.decoding.steps import DecodingBatch
from biogpt.errors import BioGPTError
from biogpt.mine.decode import Drafts, Row, Speculation, greedy_rows
from biogpt.mine.export import export, query
from biogpt.mine.pipeline import mine
from biogpt.mine.store import open_store
from biogpt.tasks import Example, encode_example, encode_prompt
from biogpt.tasks.evaluation import extract, predict, text_examples
from biogpt.tokenizer import Tokenizer

VOCAB = len(Tokenizer.from_pretrained("biogpt"))
DOCUMENTS = 300
NEW_TOKENS = 4
TEXT = "Famotidine-associated delirium in six patients."
TAUGHT = "the relation between famotidine and delirium exists."
REPEATS = 5  # documents of the corpus that are TEXT, under their own PMIDs


# --------------------------------------------------------------------------------------------
# Models and corpora
# --------------------------------------------------------------------------------------------


def tiny_task_model(path: Path, task: str = "bc5cdr") -> Path:
    """A tiny random model (released vocabulary + 9 prompt rows) with `task`'s record. Small
    token embeddings and wide layer weights make its greedy answers vary with the input."""
    config = ModelConfig.from_name(
        "tiny", dropout=0.0, attention_dropout=0.0, vocab_size=VOCAB + 9, hidden_size=32,
        num_heads=2, intermediate_size=64, max_positions=1024,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = BioGPT(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.02 if "embed_tokens" in name else 0.5)
    model.save_pretrained(path)
    tasks.write_task_record(path, tasks.get(task))
    return path


def taught_model(path: Path) -> Path:
    """`mini` with BC5CDR's prompt tokens, trained on `TEXT` -> `TAUGHT` until greedy
    decoding writes it back."""
    task = tasks.get("bc5cdr")
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.set_num_threads(1)
        try:
            model = BioGPT.from_pretrained("mini")
            tokenizer = Tokenizer.from_pretrained("biogpt")
            tokenizer.add_tokens(task.prompt())
            model.resize_vocab(len(tokenizer))
            example = Example(id="0", source=task.source_of_text(TEXT), target=TAUGHT, gold=None)
            tokens = torch.tensor([encode_example(tokenizer, task, example)[0]])
            optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
            for _ in range(8):
                model.train()
                for _ in range(10):
                    logits = model(tokens[:, :-1]).logits[0]
                    loss = torch.nn.functional.cross_entropy(logits, tokens[0, 1:])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                (written,) = extract(copy.deepcopy(model).eval(), tokenizer, task, [TEXT], 16)
                if written["answer"] == TAUGHT:
                    break
            else:
                raise AssertionError(f"mini did not learn {TAUGHT!r}: {written['answer']!r}")
        finally:
            torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    tasks.write_task_record(path, task)
    return path


def corpus_rows(count: int = DOCUMENTS, start: int = 0) -> list[dict]:
    """Short abstracts of varied lengths; PMIDs from 1000 + start."""
    words = ["aspirin", "cisplatin", "renal", "injury", "patients", "dose", "liver", "rats"]
    rows = []
    for k in range(start, start + count):
        body = " ".join(words[(k * 7 + j) % len(words)] for j in range(k % 11 + 1))
        rows.append({"pmid": str(1000 + k), "title": f"Drug {k} study.", "abstract": body + "."})
    return rows


def write_jsonl(path: Path, rows: list[dict], bad_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    for index, text in sorted((bad_lines or {}).items()):
        lines.insert(index, text)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def text_of(row: dict) -> str:
    return " ".join(f"{row['title']} {row['abstract']}".split())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_task_model(tmp_path_factory.mktemp("tiny") / "cdr")


@pytest.fixture(scope="module")
def taught(tmp_path_factory) -> Path:
    return taught_model(tmp_path_factory.mktemp("taught") / "cdr")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "abstracts.jsonl", corpus_rows())


def snapshot(location: str | Path) -> dict[str, list[tuple]]:
    """Every table of a store, sorted, without the columns that hold the time of writing."""
    stamps = {"seen_at", "done_at", "mined_at", "created_at"}
    out = {}
    with open_store(location) as store:
        for table in ("documents", "ledger", "results", "relations"):
            described = store.execute(f"SELECT * FROM {table} LIMIT 0").description
            columns = [d[0] for d in described if d[0] not in stamps]
            out[table] = sorted(store.fetchall(f"SELECT {', '.join(columns)} FROM {table}"))
        store.commit()
    return out


def quiet_mine(*args, **kwargs):
    kwargs.setdefault("progress", None)
    kwargs.setdefault("max_new_tokens", NEW_TOKENS)
    return mine(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# Answers and provenance
# --------------------------------------------------------------------------------------------


def test_mined_answers_equal_predict_with_their_provenance(tiny, corpus, tmp_path) -> None:
    store = tmp_path / "mined.sqlite"
    summary = quiet_mine([f"cdr={tiny}"], [str(corpus)], store, batch_size=8)
    assert summary.models[0].mined == DOCUMENTS and summary.malformed == []

    model = BioGPT.from_pretrained(tiny).eval()
    tokenizer = tokenizer_for(tiny, model.config.vocab_size)
    task = tasks.task_for_model(tiny, None)
    rows = corpus_rows()
    examples = text_examples(task, [(r["pmid"], text_of(r)) for r in rows])
    answers = predict(model, tokenizer, task, examples, 8, NEW_TOKENS, progress=False)

    with open_store(store) as opened:
        results = {r["pmid"]: r for r in opened.results()}
    assert {k: r["raw"] for k, r in results.items()} == answers
    assert len(set(answers.values())) > 5, "the tiny model should answer variously"

    weights = hashlib.sha256(b"model.safetensors\0" + (tiny / "model.safetensors").read_bytes())
    for line, row in enumerate(rows[:20], start=1):
        result = results[row["pmid"]]
        assert result["model"] == "cdr" and result["task"] == "bc5cdr"
        assert result["checkpoint"] == weights.hexdigest()
        assert result["template_version"] == task.template_version
        assert result["decoding"] == {"strategy": "greedy", "max_new_tokens": NEW_TOKENS,
                                      "max_source_tokens": 640, "dtype": "fp32"}  # fmt: skip
        assert (result["source"], result["line"]) == (str(corpus.resolve()), line)
        assert result["span"] is None and result["mined_at"]
        assert isinstance(result["structure"], list)
        parsed = task.parse(result["raw"], examples[line - 1])
        assert result["unparseable"] == parsed.unparseable
    # the confidence is the greedy answer's log-probability, `</s>` included
    for row in rows[:4]:
        ids = torch.tensor([encode_prompt(tokenizer, task, task.source_of_text(text_of(row)))])
        out = generate(model, ids, max_new_tokens=NEW_TOKENS, eos_token_id=2, pad_token_id=1)
        assert results[row["pmid"]]["confidence"] == pytest.approx(
            float(out.scores.sum()), abs=1e-4
        )


def greedy_answers(path: Path, texts: list[str], lookup: int, counts: Speculation | None = None):
    """The greedy answers of the task model at `path` to `texts`, 8 rows at a time, with
    budgets from 2 to 24 tokens: {index: (tokens, ended, logprob)}."""
    model = BioGPT.from_pretrained(path).eval()
    tokenizer = tokenizer_for(path, model.config.vocab_size)
    task = tasks.task_for_model(path, None)
    rows = [
        Row(i, encode_prompt(tokenizer, task, task.source_of_text(text)), 2 + (i * 5) % 23)
        for i, text in enumerate(texts)
    ]
    finished = greedy_rows(model, rows, 8, tokenizer.eos_id, lookup, counts)
    return {r.key: (r.tokens, r.ended, r.logprob) for rows in finished for r in rows}


def test_drafts_verified_together_change_nothing_but_the_passes(tiny, tmp_path, monkeypatch):
    # Rows that draft tokens from their prompts and verify them in one pass of the fused
    # step, each row keeping its own count: the same answers, `</s>`s and log-probabilities
    # as one token a pass, bit for bit. `mini` with untrained prompt tokens copies its
    # prompt, so its rows keep several tokens a pass; the tiny model's do not, and it soon
    # stops drafting. (Prompts run on a fixed thread count: PyTorch's prompt products may
    # round differently on another.)
    monkeypatch.setenv(ENVIRONMENT, "fixed")
    texts = [TEXT] * 4 + [text_of(r) for r in corpus_rows(20)]
    copying = tmp_path / "mini"
    model = BioGPT.from_pretrained("mini")
    tokenizer = Tokenizer.from_pretrained("biogpt")
    tokenizer.add_tokens(tasks.get("bc5cdr").prompt())
    model.resize_vocab(len(tokenizer))
    model.save_pretrained(copying)
    tokenizer.save_pretrained(copying)
    tasks.write_task_record(copying, tasks.get("bc5cdr"))
    given_back: list[list[int]] = []  # each rollback's counts, a row's each
    rollback = DecodingBatch.rollback

    def spy(batch: DecodingBatch, count) -> None:
        given_back.append(torch.as_tensor(count).reshape(-1).tolist())
        rollback(batch, count)

    monkeypatch.setattr(DecodingBatch, "rollback", spy)
    for path in (tiny, copying):
        counts = Speculation()
        plain = greedy_answers(path, texts, 0)
        assert greedy_answers(path, texts, 7, counts) == plain
        if gemv.available() and path == copying:
            assert counts.passes > 0 and counts.tokens_per_row_pass > 2.0, counts
    # Every draft fed, however unlikely: the tiny model's rows keep different numbers of
    # tokens in a pass and give back the rest, leaving unreal slots behind
    monkeypatch.setattr(Drafts, "width", lambda self, rows, drafts: 1 + max(map(len, drafts)))
    texts += [  # runs of words that recur with other words after them: drafts go wrong
        f"Cisplatin and renal injury in rats. Cisplatin and liver injury in {k} rats given "
        "cisplatin and aspirin: renal injury, liver injury and dose."
        for k in range(8)
    ]
    compacted = []
    compact = KVCache.compact
    monkeypatch.setattr(KVCache, "compact", lambda cache: compacted.append(compact(cache)))
    for path in (tiny, copying):
        assert greedy_answers(path, texts, 7) == greedy_answers(path, texts, 0)
    if gemv.available():
        assert any(len(set(c)) > 1 for c in given_back), given_back
        assert compacted  # the unreal slots filled a cache, and were dropped


def test_drafts_stay_within_the_position_table(monkeypatch) -> None:
    # A prompt that leaves room for a few tokens before the model's last position, beside
    # rows that draft: the pass's width keeps every row's tokens, fillers included, inside
    # the position table, and the answers are those of one token a pass.
    monkeypatch.setenv(ENVIRONMENT, "fixed")
    model = BioGPT.from_pretrained("mini").eval()
    limit = model.config.max_positions
    repeated = [2] + [100, 200, 300, 400, 500] * 6  # `mini` goes on repeating it
    noise = torch.randint(10, 40000, (limit - 9,), generator=torch.Generator().manual_seed(0))
    long = [2, *noise.tolist()]

    def answers(lookup: int) -> dict:
        rows = [
            Row("B", repeated, 100),
            Row("C", repeated[:8], 26),
            Row("A", long, limit - len(long)),
        ]
        done = [r for f in greedy_rows(model, rows, 2, 2, lookup) for r in f]
        return {r.key: (r.tokens, r.ended, r.logprob) for r in done}

    assert answers(7) == answers(0)


def test_a_rerun_does_nothing_and_new_files_add_only_new_documents(tiny, tmp_path) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", corpus_rows(40))
    store = tmp_path / "mined.sqlite"
    assert quiet_mine([f"cdr={tiny}"], [str(first)], store).models[0].mined == 40
    before = snapshot(store)

    again = quiet_mine([f"cdr={tiny}"], [str(first)], store)
    assert (again.models[0].mined, again.models[0].done) == (0, 40)
    assert snapshot(store) == before

    # a second file: ten known documents (one with a changed abstract) and ten new ones
    rows = corpus_rows(10, start=30) + corpus_rows(10, start=40)
    rows[0] = {**rows[0], "abstract": "A changed abstract."}
    second = write_jsonl(tmp_path / "b.jsonl", rows)
    more = quiet_mine([f"cdr={tiny}"], [str(tmp_path / "*.jsonl")], store)
    assert more.models[0].mined == 11  # the changed one and the new ones
    assert more.ingested.changed == 1 and more.ingested.new == 10
    with open_store(store) as opened:
        results = {r["pmid"]: r for r in opened.results()}
        assert opened.counts()["results"] == 50 == opened.counts()["ledger"]
    assert results["1030"]["source"] == str(second.resolve())
    assert results["1031"]["source"] == str(first.resolve())  # unchanged: the later record wins
    # ... but is not mined again (its ledger row has the same content)

    # a rerun of both files in the same order finds everything done
    last = quiet_mine([f"cdr={tiny}"], [str(first), str(second)], store)
    assert last.models[0].mined == 0


def test_malformed_records_are_counted_with_file_and_line_and_skipped(tiny, tmp_path) -> None:
    bad = {3: "{not json", 5: json.dumps({"title": "no pmid"}), 8: json.dumps([1, 2])}
    path = write_jsonl(tmp_path / "bad.jsonl", corpus_rows(10), bad)
    summary = quiet_mine([f"cdr={tiny}"], [str(path)], tmp_path / "mined.sqlite")
    where = [(m.line, m.reason.split(" ")[0]) for m in summary.malformed]
    assert where == [(4, "not"), (6, "no"), (9, "not")]
    assert all(m.source == str(path.resolve()) for m in summary.malformed)
    assert summary.models[0].mined == 10
    text = summary.format()
    assert f"malformed {path.resolve()}:4: not JSON" in text and "malformed: 3" in text


def medline(path: Path, citations: list[tuple[str, int, str, str]], deleted: tuple = ()) -> Path:
    """A MEDLINE file of (pmid, version, revised YYYY-MM-DD, abstract) citations."""
    parts = ["<?xml version='1.0' encoding='utf-8'?>", "<PubmedArticleSet>"]
    for pmid, version, revised, abstract in citations:
        year, month, day = revised.split("-")
        parts += [
            "<PubmedArticle>",
            "<MedlineCitation Status='MEDLINE'>",
            f"<PMID Version='{version}'>{pmid}</PMID>",
            f"<DateRevised><Year>{year}</Year><Month>{month}</Month><Day>{day}</Day></DateRevised>",
            f"<Article><ArticleTitle>Title {pmid}.</ArticleTitle>",
            f"<Abstract><AbstractText Label='RESULTS'>{abstract}</AbstractText></Abstract>",
            "</Article></MedlineCitation></PubmedArticle>",
        ]
    if deleted:
        parts += ["<DeleteCitation>", *(f"<PMID Version='1'>{p}</PMID>" for p in deleted)]
        parts += ["</DeleteCitation>"]
    parts.append("</PubmedArticleSet>")
    data = "\n".join(parts).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def test_medline_updates_win_deletions_are_honoured_and_reruns_change_nothing(
    tiny, tmp_path
) -> None:
    base = medline(tmp_path / "base.xml.gz", [
        ("1", 1, "2020-01-01", "aspirin helps"), ("2", 1, "2020-01-01", "renal injury"),
        ("3", 1, "2020-01-01", "liver rats"),
    ])  # fmt: skip
    update = medline(
        tmp_path / "update.xml", [("2", 1, "2021-05-01", "renal injury in rats")], deleted=("3",)
    )
    store = tmp_path / "mined.sqlite"
    quiet_mine([f"cdr={tiny}"], [str(base)], store)
    with open_store(store) as opened:
        first = {r["pmid"]: r for r in opened.results()}
    assert sorted(first) == ["1", "2", "3"] and first["2"]["line"] == 11

    summary = quiet_mine([f"cdr={tiny}"], [str(base), str(update)], store)
    assert summary.models[0].mined == 1 and summary.models[0].removed == 1
    with open_store(store) as opened:
        now = {r["pmid"]: r for r in opened.results()}
    assert sorted(now) == ["1", "2"]
    assert now["2"]["source"] == str(update.resolve())
    assert now["2"]["content_hash"] != first["2"]["content_hash"]

    # the baseline again, after the update: its older version of 2 and of 3 change nothing
    before = snapshot(store)
    again = quiet_mine([f"cdr={tiny}"], [str(base)], store)
    assert again.models[0].mined == 0 and again.ingested.older == 2
    assert snapshot(store) == before


def test_a_broken_xml_file_is_one_malformed_record_and_the_run_goes_on(tiny, tmp_path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", corpus_rows(3))
    broken = tmp_path / "broken.xml"
    broken.write_text("<PubmedArticleSet>\n<PubmedArticle>\n<oops></PubmedArticle>\n")
    summary = quiet_mine([f"cdr={tiny}"], [str(broken), str(good)], tmp_path / "m.sqlite")
    assert [(m.source, m.line) for m in summary.malformed] == [(str(broken.resolve()), 3)]
    assert summary.models[0].mined == 3


def test_pubtator_and_gzipped_jsonl_inputs(tiny, tmp_path) -> None:
    pubtator = tmp_path / "cdr.pubtator"
    pubtator.write_text(
        "11|t|Famotidine-associated delirium.\n11|a|Six patients.\n"
        "11\t0\t10\tFamotidine\tChemical\tD015738\n11\tCID\tD015738\tD003693\n\n"
        "this line is no PubTator line\n\n"
        "12|t|Aspirin.\n12|a|Renal injury.\n"
    )
    packed = tmp_path / "more.jsonl.gz"
    packed.write_bytes(gzip.compress(json.dumps({"id": 13, "text": "Liver rats."}).encode()))
    from biogpt.mine.sources import Malformed, Record, read_events

    events = list(read_events([pubtator, packed]))
    assert events[0] == Record("11", "Famotidine-associated delirium. Six patients.",
                               str(pubtator), 1)  # fmt: skip
    assert events[1] == Malformed(str(pubtator), 6, "not a PubTator line")
    assert [(e.pmid, e.line) for e in events[2:]] == [("12", 8), ("13", 1)]  # type: ignore[union-attr]
    summary = quiet_mine([f"cdr={tiny}"], [str(pubtator), str(packed)], tmp_path / "m.sqlite")
    assert summary.models[0].mined == 3 and len(summary.malformed) == 1


# --------------------------------------------------------------------------------------------
# Killed and resumed
# --------------------------------------------------------------------------------------------

MINE_IN_A_PROCESS = (
    "import sys; from biogpt.mine.pipeline import mine; "
    "mine([sys.argv[1]], [sys.argv[2]], sys.argv[3], batch_size=4, max_new_tokens=4, "
    "progress=None)"
)


def results_so_far(store: Path) -> int:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    except sqlite3.Error:
        return 0  # not made yet


def run_and_kill(argv: list[str], store: Path, at: int | None, seconds: float) -> bool:
    """Start a mining process; SIGKILL it once the store holds `at` results (or after
    `seconds` when `at` is None). Whether it was killed before it finished."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    began = time.monotonic()
    try:
        while process.poll() is None:
            if (at is None and time.monotonic() - began >= seconds) or (
                at is not None and results_so_far(store) >= at
            ):
                process.kill()
                process.wait()
                return True
            time.sleep(0.01)
        assert process.returncode == 0, process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        return False
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()  # type: ignore[union-attr]


def test_a_run_killed_at_random_points_resumes_to_the_uninterrupted_store(
    tiny, corpus, tmp_path
) -> None:
    clean = tmp_path / "clean.sqlite"
    killed = tmp_path / "killed.sqlite"
    base = [sys.executable, "-c", MINE_IN_A_PROCESS, f"cdr={tiny}", str(corpus)]
    assert not run_and_kill([*base, str(clean)], clean, None, 1e9)

    chooser = random.Random(17)
    kills = 0
    # one kill at a random moment (loading, ingesting or mining), then at random counts
    if run_and_kill([*base, str(killed)], killed, None, chooser.uniform(0.5, 3.0)):
        kills += 1
    for _ in range(4):
        done = results_so_far(killed)
        if done >= DOCUMENTS:
            break
        at = chooser.randint(done + 1, min(done + 80, DOCUMENTS))
        kills += run_and_kill([*base, str(killed)], killed, at, 0)
    assert kills >= 3
    assert not run_and_kill([*base, str(killed)], killed, None, 1e9)  # resume to the end

    expected, got = snapshot(clean), snapshot(killed)
    assert len(got["results"]) == DOCUMENTS == len({r[0] for r in got["results"]})
    assert got == expected


# --------------------------------------------------------------------------------------------
# Query and export
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relation_store(taught, tmp_path_factory) -> Path:
    """A store of the taught model over 40 abstracts, `REPEATS` of them `TEXT`."""
    root = tmp_path_factory.mktemp("relations")
    rows = corpus_rows(40)
    for k in range(REPEATS):
        rows[k * 7] = {"pmid": rows[k * 7]["pmid"], "text": TEXT}
    path = write_jsonl(root / "abstracts.jsonl", rows)
    store = root / "mined.sqlite"
    quiet_mine([f"cdr={taught}"], [str(path)], store, max_new_tokens=16)
    return store


def cli(*argv: str | Path) -> None:
    """Run a mining subcommand as the command line would (`register`'s parsers)."""
    import argparse

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable, help: str, examples: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help)
        command.set_defaults(func=func)
        return command

    register(add)
    args = parser.parse_args([str(a) for a in argv])
    args.func(args)


def test_query_gives_top_pairs_with_counts_and_supporting_pmids(relation_store, capsys) -> None:
    pair = {"head": "famotidine", "tail": "delirium"}
    with open_store(relation_store) as store:
        stating = sorted(r["pmid"] for r in store.results() if pair in r["structure"])
        (top, *_) = query(store)
        assert len(stating) >= REPEATS  # the taught model says it of other texts too
        assert (top.head, top.tail, top.count) == ("famotidine", "delirium", len(stating))
        assert top.pmids == stating[:10]
        assert (top.biored, top.pubtator) == ("Positive_Correlation", "cause")
        assert query(store, entity="FAMOTIDINE", relation="cause")[0].count == len(stating)
        assert query(store, entity="aspirin") == []
        assert query(store, pmid="1007")[0].pmids == ["1007"]
        (relation,) = store.relations(pmid="1007")  # one of the TEXT documents
        assert relation["sentence"] == TEXT and relation["head_type"] == "Chemical"
    cli("query", "--store", relation_store, "--entity", "delirium", "--json")
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["count"] == len(stating)


def test_exports_read_back_in_every_format(relation_store, tmp_path, capsys) -> None:
    with open_store(relation_store) as store:
        expected = list(store.results())
    cli("export", "--store", relation_store, "--out", tmp_path / "all.jsonl")
    records = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert records == expected and len(records) == 40
    for field in ("pmid", "model", "task", "raw", "structure", "confidence", "checkpoint"):
        assert field in records[0]
    assert sum(bool(r["structure"]) for r in records) >= REPEATS

    cli("export", "--store", relation_store, "--out", tmp_path / "all.csv")
    with open(tmp_path / "all.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["pmid"] for r in rows] == [r["pmid"] for r in expected]
    assert [json.loads(r["structure"]) for r in rows] == [r["structure"] for r in expected]

    cli("export", "--store", relation_store, "--out", tmp_path / "rel.jsonl", "--relations")
    relations = [json.loads(x) for x in (tmp_path / "rel.jsonl").read_text().splitlines()]
    assert len(relations) >= REPEATS and relations[0]["pubtator"] == "cause"

    cli("export", "--store", relation_store, "--out", tmp_path / "graph.graphml")
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    graph = ET.parse(tmp_path / "graph.graphml").getroot().find("g:graph", ns)
    assert graph is not None
    nodes = {n.get("id") for n in graph.findall("g:node", ns)}
    edges = graph.findall("g:edge", ns)
    assert {"Chemical:famotidine", "Disease:delirium"} <= nodes
    assert len(edges) == len(relations) and all(e.get("source") in nodes for e in edges)

    cli("export", "--store", relation_store, "--out", tmp_path / "neo", "--format", "neo4j")
    with open(tmp_path / "neo" / "relations.csv", newline="", encoding="utf-8") as f:
        edges_csv = list(csv.DictReader(f))
    assert edges_csv[0][":TYPE"] == "CAUSE" and len(edges_csv) == len(relations)
    with open(tmp_path / "neo" / "nodes.csv", newline="", encoding="utf-8") as f:
        assert {r["id:ID"] for r in csv.DictReader(f)} == nodes

    pyarrow = pytest.importorskip("pyarrow.parquet", reason="the parquet export needs pyarrow")
    cli("export", "--store", relation_store, "--out", tmp_path / "all.parquet")
    table = pyarrow.read_table(tmp_path / "all.parquet").to_pylist()
    assert [r["pmid"] for r in table] == [r["pmid"] for r in expected]
    assert table[0]["confidence"] == pytest.approx(expected[0]["confidence"])


def test_export_never_overwrites_without_overwrite(relation_store, tmp_path) -> None:
    out = tmp_path / "all.jsonl"
    out.write_text("keep me\n")
    with open_store(relation_store) as store:
        with pytest.raises(BioGPTError, match="exists; pass --overwrite"):
            export(store, out)
        assert out.read_text() == "keep me\n"
        with pytest.raises(BioGPTError, match="unknown format"):
            export(store, tmp_path / "all.txt")
        assert export(store, out, overwrite=True) == 40
        (tmp_path / "neo").mkdir()
        with pytest.raises(BioGPTError, match="exists"):
            export(store, tmp_path / "neo", "neo4j")
        assert export(store, tmp_path / "neo", "neo4j", overwrite=True) >= REPEATS
    assert len(out.read_text().splitlines()) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.jsonl", "neo"]


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def test_the_mine_command_prints_progress_and_a_summary(tiny, tmp_path, capsys) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", corpus_rows(12), {2: "{oops"})
    store = tmp_path / "s.sqlite"
    cli("mine", "--model", f"cdr={tiny}", "--input", path, "--store", store,
        "--max-new-tokens", "3", "--limit", "5")  # fmt: skip
    out, err = capsys.readouterr()
    assert "mining cdr: 5/5 documents" in err and "documents/s" in err
    assert "model cdr (bc5cdr): mined 5, skipped as done 0" in out
    assert f"malformed {path.resolve()}:3: not JSON" in out
    cli("mine", "--model", str(tiny), "--input", path, "--store", store, "--quiet",
        "--max-new-tokens", "3")  # fmt: skip
    out, err = capsys.readouterr()
    assert f"model {tiny} (bc5cdr): mined 12" in out and err == ""


def test_refusals_are_one_line(tiny, tmp_path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", corpus_rows(2))
    with pytest.raises(BioGPTError, match="no such file"):
        quiet_mine([str(tiny)], [str(tmp_path / "missing*.jsonl")], tmp_path / "s.sqlite")
    with pytest.raises(BioGPTError, match="records no task"):
        quiet_mine(["mini"], [str(path)], tmp_path / "s.sqlite")
    with pytest.raises(BioGPTError, match="given twice"):
        quiet_mine([f"a={tiny}", f"a={tiny}"], [str(path)], tmp_path / "s.sqlite")
    with pytest.raises(BioGPTError, match="no such file"):
        cli("query", "--store", tmp_path / "none.sqlite")


def test_the_allocator_threshold_is_fixed_on_glibc_unless_the_user_set_it(monkeypatch) -> None:
    """`biogpt mine` fixes glibc's mmap threshold (flat memory over a long corpus); a
    MALLOC_MMAP_THRESHOLD_ of the user's wins, and a C library that is not glibc is left be."""
    import platform

    from biogpt.cpu.memory import fix_mmap_threshold

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert fix_mmap_threshold() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert fix_mmap_threshold() is (platform.libc_ver()[0] == "glibc")


def test_trimming_gives_freed_heap_pages_back_on_glibc() -> None:
    """Holes left in the heap by freed blocks are returned by `trim_heap` (what the mining
    loop calls between batches)."""
    import platform

    from biogpt.cpu.memory import trim_heap

    if platform.libc_ver()[0] != "glibc":
        assert trim_heap() is False
        return
    blocks = [bytes(200_000) for _ in range(200)]  # 40 MB below any mmap threshold: the heap
    del blocks[::2]  # holes between the blocks still held
    assert trim_heap() is True
    del blocks
