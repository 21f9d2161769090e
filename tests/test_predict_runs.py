"""predict, evaluate, extract and `score --task` runs: the task read from the model, answers
written a batch at a time and resumed to the same bytes, and every refusal made at once,
in one line, before the model loads."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from shared_data import DATA, NO_DATA

from biogpt import tasks
from biogpt.api import BioGPT
from biogpt.cli import main
from biogpt.tasks import evaluation
from biogpt.tokenizer import Tokenizer

VOCAB = len(Tokenizer.from_pretrained("biogpt"))
TEXTS = [f"Drug {k} caused disease {k} in {k + 2} patients." for k in range(5)]
SMALL = ["--max-new-tokens", "4", "--batch-size", "2"]


@pytest.fixture
def make_model(tmp_path: Path, lively_model) -> Callable[..., Path]:
    """`make_model(task_name=None)`: a tiny random model with the released vocabulary and
    nine prompt-token rows, saved in tmp_path, with a task record unless `task_name` is None
    (a `tasks.Task` stands for itself)."""

    def make(task: str | tasks.Task | None = None, name: str = "model") -> Path:
        model = lively_model(1, vocab_size=VOCAB + 9, hidden_size=32, num_heads=2,
                             intermediate_size=64, max_positions=1024)  # fmt: skip
        path = tmp_path / name
        model.save_pretrained(path)
        if task is not None:
            tasks.write_task_record(path, tasks.get(task) if isinstance(task, str) else task)
        return path

    return make


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "texts.jsonl"
    rows = [{"id": f"t{k}", "text": text} for k, text in enumerate(TEXTS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Counts the batches decoded (calls of the `generate` that predict uses)."""
    seen: list[int] = []
    real = evaluation.generate

    def counting(*args, **kwargs):
        seen.append(args[1].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "generate", counting)
    return seen


def interrupt_after(monkeypatch, batches: int) -> None:
    """Make predict's decoding raise KeyboardInterrupt (Ctrl-C) after `batches` batches."""
    real = evaluation.generate
    done = []

    def stopping(*args, **kwargs):
        if len(done) == batches:
            raise KeyboardInterrupt
        done.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "generate", stopping)


def forbid_loading(monkeypatch) -> None:
    """From here on, loading a model fails the test."""

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(BioGPT, "from_pretrained", loaded)


@pytest.fixture
def no_model(monkeypatch) -> None:
    """Loading a model, or decoding, fails the test: the command must refuse before."""

    def decoded(*args, **kwargs):
        raise AssertionError("generate was called")

    forbid_loading(monkeypatch)
    monkeypatch.setattr(evaluation, "generate", decoded)


def run(capsys, *argv: str | Path) -> tuple[int, str, str]:
    """`biogpt ARGV`'s exit status, stdout and stderr (argparse's refusals exit)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv: str | Path) -> str:
    """The one error line of a command that must exit with status 2 and print nothing else."""
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    command = str(argv[0])
    assert lines[0].startswith(f"biogpt {command}: error: "), lines[0]
    return lines[0]


def custom_split(path: Path, n: int = 4) -> Path:
    """A plain-target custom task's split of `n` examples."""
    rows = [{"id": k, "text": TEXTS[k % len(TEXTS)], "target": f"answer {k}."} for k in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --------------------------------------------------------------------------------------------
# The task comes from the model
# --------------------------------------------------------------------------------------------


def test_the_task_comes_from_the_models_record(make_model, texts: Path, capsys) -> None:
    hoc = make_model("hoc", "hoc-model")
    code, out, _ = run(capsys, "extract", "--model", hoc, "--max-new-tokens", "3", "Cells grow.")
    assert code == 0
    result = json.loads(out)
    assert "hoc" in result and "bc5cdr" not in result  # extract no longer assumes bc5cdr

    code, out, _ = run(capsys, "predict", "--model", hoc, "--input", texts, *SMALL)
    assert code == 0 and len(out.splitlines()) == len(TEXTS)

    # --task that agrees with the record is fine; one that differs is refused.
    assert run(capsys, "predict", "--model", hoc, "--task", "hoc", "--input", texts, *SMALL)[0] == 0
    for where in (["predict", "--input", texts], ["extract", "Cells grow."]):
        line = refused(capsys, *where, "--model", hoc, "--task", "ddi")
        assert "--task ddi" in line and "fine-tuned for hoc" in line


@pytest.mark.parametrize("command", ["predict", "evaluate", "extract"])
def test_a_model_without_a_record_needs_task(
    command: str, make_model, texts: Path, tmp_path: Path, capsys, no_model
) -> None:
    base = make_model(None)
    where = {"predict": ["--input", texts], "evaluate": ["--split", "test"], "extract": ["x"]}
    line = refused(capsys, command, "--model", base, *where[command])
    assert "pass --task" in line and str(base) in line


# --------------------------------------------------------------------------------------------
# Answers written as they are made, and resumed
# --------------------------------------------------------------------------------------------


def test_an_interrupted_predict_keeps_its_batches_and_resumes_to_the_same_bytes(
    make_model, texts: Path, tmp_path: Path, capsys, monkeypatch, calls: list[int]
) -> None:
    model = make_model("bc5cdr")
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    assert (
        run(capsys, "predict", "--model", model, "--input", texts, *SMALL, "--output", full)[0] == 0
    )
    lines = full.read_bytes().splitlines(keepends=True)
    assert [json.loads(line)["id"] for line in lines] == [f"t{k}" for k in range(5)]

    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)  # Ctrl-C while the second batch decodes
        code, _, err = run(capsys, "predict", "--model", model, "--input", texts, *SMALL,
                           "--output", part)  # fmt: skip
    assert code == 130 and "interrupted" in err
    assert part.read_bytes() == b"".join(lines[:2])  # the first batch, whole and on disk

    with part.open("ab") as f:  # a run killed in the middle of writing a line
        f.write(lines[2][:9])
    calls.clear()
    code, _, err = run(capsys, "predict", "--model", model, "--input", texts, *SMALL,
                       "--output", part, "--resume")  # fmt: skip
    assert code == 0 and "wrote 3 predictions" in err and "after the 2 already there" in err
    assert calls == [2, 1]  # only the examples the file lacked were decoded
    assert part.read_bytes() == full.read_bytes()


def test_a_limited_run_resumed_without_the_limit_gives_the_whole_file(
    make_model, texts: Path, tmp_path: Path, capsys
) -> None:
    model = make_model("bc5cdr")
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    args = ["predict", "--model", model, "--input", texts, *SMALL]
    assert run(capsys, *args, "--output", full)[0] == 0
    assert run(capsys, *args, "--output", part, "--limit", "2")[0] == 0
    assert len(part.read_text().splitlines()) == 2
    line = refused(capsys, *args, "--output", part, "--resume", "--limit", "1")
    assert "part.jsonl:2" in line and "more predictions than" in line
    assert run(capsys, *args, "--output", part, "--resume")[0] == 0
    assert part.read_bytes() == full.read_bytes()
    # Resuming a finished file decodes nothing and changes nothing.
    code, _, err = run(capsys, *args, "--output", part, "--resume")
    assert code == 0 and "wrote 0 predictions" in err and part.read_bytes() == full.read_bytes()


def test_resume_refuses_a_file_of_another_run(
    make_model, texts: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    model = make_model("bc5cdr")
    part = tmp_path / "part.jsonl"
    args = ["predict", "--model", model, *SMALL, "--output", part]
    assert run(capsys, *args, "--input", texts, "--limit", "2")[0] == 0
    before = part.read_bytes()
    forbid_loading(monkeypatch)  # every refusal comes before the model loads

    line = refused(capsys, *args, "--input", texts, "--resume", "--max-new-tokens", "5")
    assert "--max-new-tokens 4" in line and "--max-new-tokens 5" in line
    line = refused(capsys, *args, "--input", texts, "--resume", "--dtype", "bf16")
    assert "--dtype" in line
    other = make_model("bc5cdr", "other-model")
    line = refused(capsys, "predict", "--model", other, *SMALL, "--output", part, "--input",
                   texts, "--resume")  # fmt: skip
    assert "--model" in line and "other-model" in line
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(reversed(texts.read_text().splitlines(keepends=True))))
    line = refused(capsys, *args, "--input", shuffled, "--resume")
    assert "--input" in line  # another input file
    # The same file's records in another order: the ids are checked too.
    texts.write_text("".join(reversed(texts.read_text().splitlines(keepends=True))))
    line = refused(capsys, *args, "--input", texts, "--resume")
    assert "part.jsonl:1" in line and "'t0'" in line and "'t4'" in line

    (tmp_path / "part.jsonl.meta.json").unlink()
    line = refused(capsys, *args, "--input", texts, "--resume")
    assert "part.jsonl.meta.json" in line and "--overwrite" in line
    assert part.read_bytes() == before  # a refused resume changes nothing


def test_predict_prints_each_batch_as_it_finishes(
    make_model, texts: Path, capsys, monkeypatch
) -> None:
    model = make_model("bc5cdr")
    real = evaluation.generate
    printed_before: list[int] = []

    def watching(*args, **kwargs):
        out = capsys.readouterr().out  # what stdout received before this batch decodes
        printed_before.append(len(out.splitlines()))
        print(out, end="")  # and give it back
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "generate", watching)
    code, out, _ = run(capsys, "predict", "--model", model, "--input", texts, *SMALL)
    assert code == 0
    assert printed_before == [0, 2, 4]
    assert [json.loads(line)["id"] for line in out.splitlines()] == [f"t{k}" for k in range(5)]


def test_evaluate_keeps_its_predictions_beside_the_report_and_resumes(
    make_model, tmp_path: Path, capsys, monkeypatch
) -> None:
    task = tasks.get("custom")
    model = make_model(task)
    split = custom_split(tmp_path / "test.jsonl", 5)
    args = ["evaluate", "--model", model, "--split", split, *SMALL]
    (tmp_path / "a").mkdir()
    code, out, _ = run(capsys, *args, "--report", tmp_path / "a" / "r.json")
    assert code == 0 and json.loads(out)["examples"] == 5
    whole = (tmp_path / "a" / "r.predictions.jsonl").read_bytes()
    assert len(whole.splitlines()) == 5

    report, kept = tmp_path / "r.json", tmp_path / "r.predictions.jsonl"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        assert run(capsys, *args, "--report", report)[0] == 130
    assert len(kept.read_text().splitlines()) == 4 and not report.exists()
    code, out, _ = run(capsys, *args, "--report", report, "--resume")
    assert code == 0
    assert kept.read_bytes() == whole
    written = json.loads(report.read_text())
    assert written["examples"] == 5 and written["predictions"] == str(kept)
    assert written["task"] == "custom" and json.loads(out)["accuracy"] == written["accuracy"]


@pytest.fixture
def bc5cdr_data(tmp_path: Path) -> Path:
    """The first three documents of BC5CDR's test split."""
    if not DATA.is_dir():
        pytest.skip(NO_DATA)
    root = tmp_path / "data"
    (root / "bc5cdr").mkdir(parents=True)
    documents = json.loads((DATA / "bc5cdr" / "test.json").read_text())
    (root / "bc5cdr" / "test.json").write_text(json.dumps(dict(list(documents.items())[:3])))
    shutil.copyfile(DATA / "bc5cdr" / "test.entities.json", root / "bc5cdr" / "test.entities.json")
    return root


def test_evaluate_a_recorded_bc5cdr_model_with_a_limit(
    make_model, bc5cdr_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    model = make_model("bc5cdr")
    monkeypatch.chdir(tmp_path)
    code, _, _ = run(capsys, "evaluate", "--model", model, "--split", "test", "--data",
                       bc5cdr_data, "--limit", "2", *SMALL)  # fmt: skip
    assert code == 0
    report = json.loads(Path("bc5cdr-test-report.json").read_text())
    assert report["examples"] == 2 and report["limit"] == 2 and report["task"] == "bc5cdr"
    assert len(Path("bc5cdr-test-report.predictions.jsonl").read_text().splitlines()) == 2
    # A random model's answers are no relations: each is unparseable, never "none found".
    answers = tasks.read_predictions("bc5cdr-test-report.predictions.jsonl")
    parsed = [
        tasks.get("bc5cdr").parse(text, tasks.Example("", "", "", None))
        for text in answers.values()
    ]
    assert report["unparseable"] == sum(p.unparseable > 0 for p in parsed)


# --------------------------------------------------------------------------------------------
# Output paths, checked before any work
# --------------------------------------------------------------------------------------------


def test_evaluate_refuses_a_report_in_a_missing_folder_at_once(
    make_model, tmp_path: Path, capsys, no_model
) -> None:
    model = make_model("bc5cdr")
    line = refused(capsys, "evaluate", "--model", model, "--split", "test",
                   "--report", "/nonexistent-dir/r.json")  # fmt: skip
    assert line.endswith("--report /nonexistent-dir/r.json: no such directory /nonexistent-dir")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["predict", "--output", "{tmp}"], "--output {tmp}: is a directory"),
        (["predict", "--output", "{tmp}/no/p.jsonl"], "no such directory {tmp}/no"),
        (["predict", "--output", "{tmp}/old.jsonl"], "--output {tmp}/old.jsonl: exists; pass --overwrite"),
        (["predict", "--output", "{tmp}/p.jsonl", "--resume", "--overwrite"], "not both"),
        (["predict", "--resume"], "--resume needs --output"),
        (["evaluate", "--split", "test", "--report", "{tmp}"], "--report {tmp}: is a directory"),
        (["evaluate", "--split", "test", "--report", "{tmp}/r.json", "--predictions",
          "{tmp}/old.jsonl"], "--predictions {tmp}/old.jsonl: exists"),
        (["evaluate", "--split", "test", "--report", "{tmp}/old.jsonl"], "--report {tmp}/old.jsonl: exists"),
        (["evaluate", "--split", "test", "--report", "{tmp}/r.json", "--predictions",
          "{tmp}/r.json"], "the same file as --report"),
    ],
)  # fmt: skip
def test_outputs_are_checked_before_the_model_loads(
    flags: list[str], expected: str, make_model, texts: Path, tmp_path: Path, capsys, no_model
) -> None:
    model = make_model("bc5cdr")
    (tmp_path / "old.jsonl").write_text("")
    argv = [flag.format(tmp=tmp_path) for flag in flags]
    source = ["--input", str(texts)] if argv[0] == "predict" else []
    line = refused(capsys, *argv, "--model", model, *source)
    assert expected.format(tmp=tmp_path) in line


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_an_output_folder_that_cannot_be_written_is_refused(
    make_model, texts: Path, tmp_path: Path, capsys, no_model
) -> None:
    model = make_model("bc5cdr")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        line = refused(capsys, "predict", "--model", model, "--input", texts,
                       "--output", locked / "p.jsonl")  # fmt: skip
    finally:
        locked.chmod(0o700)
    assert "permission denied" in line and "--output" in line


# --------------------------------------------------------------------------------------------
# Other bad inputs, one line each
# --------------------------------------------------------------------------------------------

BAD_INPUTS = {
    "no-text.jsonl": (b'{"id": "1", "body": "x"}\n', 'no-text.jsonl:1: expected a JSON object with "text"'),
    "number.jsonl": (b'{"id": "1", "text": "a"}\n{"id": "2", "text": 5}\n', 'number.jsonl:2: "text" must be a string'),
    "latin1.jsonl": (b'{"id": "1", "text": "caf\xe9"}\n', "latin1.jsonl:1: not UTF-8"),
    "binary.jsonl": (b"\x00\x01\x02\x7fELF\x00\n", "binary.jsonl:1: not valid JSON"),
    "twice.jsonl": (b'{"id": 1, "text": "a"}\n{"id": "1", "text": "b"}\n', "twice.jsonl:2: id '1' appears twice"),
    "empty.jsonl": (b"\n", "empty.jsonl: no texts"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_a_bad_input_file_is_one_line(
    name: str, make_model, tmp_path: Path, capsys, no_model
) -> None:
    content, expected = BAD_INPUTS[name]
    (tmp_path / name).write_bytes(content)
    line = refused(capsys, "predict", "--model", make_model("bc5cdr"), "--input", tmp_path / name)
    assert expected in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["predict", "--input", "{texts}", "--split", "test"], "pass exactly one of --split and --input"),
        (["predict"], "pass exactly one of --split and --input"),
        (["predict", "--input", "{tmp}/missing.jsonl"], "--input {tmp}/missing.jsonl: no such file"),
        (["predict", "--input", "{texts}", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        (["evaluate", "--split", "test", "--batch-size", "-2"], "--batch-size: must be >= 1, got -2"),
        (["predict", "--input", "{texts}", "--max-new-tokens", "0"], "--max-new-tokens: must be >= 1, got 0"),
        (["extract", "--max-new-tokens", "-1", "x"], "--max-new-tokens: must be >= 1, got -1"),
        (["predict", "--input", "{texts}", "--limit", "0"], "--limit: must be >= 1, got 0"),
        (["evaluate", "--split", "test", "--limit", "-3"], "--limit: must be >= 1, got -3"),
        (["predict", "--split", "tset", "--data", "{tmp}"], "--split tset: task bc5cdr has no such split"),
        (["evaluate", "--split", "dev", "--data", "{tmp}"], "--split dev: task bc5cdr has no such split"),
        (["evaluate", "--split", "test", "--data", "{tmp}/nowhere"], "--data {tmp}/nowhere: no such directory"),
        (["evaluate"], "pass --split (train, valid, test)"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line(
    flags: list[str], expected: str, make_model, texts: Path, tmp_path: Path, capsys,
    monkeypatch, no_model,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    argv = [flag.format(tmp=tmp_path, texts=texts) for flag in flags]
    line = refused(capsys, *argv, "--model", make_model("bc5cdr"))
    assert expected.format(tmp=tmp_path) in line


def test_score_refuses_predictions_that_score_nothing(tmp_path: Path, capsys) -> None:
    split = tmp_path / "gold.jsonl"
    rows = [{"id": k, "text": "t", "relations": [{"head": "a", "relation": "r", "tail": "b"}]}
            for k in range(3)]  # fmt: skip
    split.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["score", "--task", "custom", "--split", split, "--predictions"]
    predictions = tmp_path / "preds.jsonl"

    predictions.write_text("")
    assert refused(capsys, *args, predictions).endswith(f"{predictions}: no predictions")
    tasks.write_predictions(predictions, {"x": "the relation between a and b is r."})
    line = refused(capsys, *args, predictions)
    assert "none of its 1 ids" in line and "'x'" in line and "'0'" in line
    assert "--predictions" in refused(capsys, *args, tmp_path / "missing.jsonl")

    # Some missing are counted, and an echo of the prompt is unparseable, not "no relations".
    tasks.write_predictions(
        predictions, {"0": "the relation between a and b is r.", "1": "learned9learned9 learned9"}
    )
    code, out, _ = run(capsys, *args, predictions)
    scores = json.loads(out)
    assert code == 0
    assert (scores["missing"], scores["unparseable"], scores["precision"]) == (1, 1, 1.0)
