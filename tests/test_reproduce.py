"""`biogpt reproduce`: every stage of every task on a tiny random model (--quick), the files
the report reads, a run stopped while predicting (or fine-tuning) and resumed to the same
bytes, finished stages left alone, the recipe's caps recorded, and the flags refused in one
line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import DATA, needs_data

from biogpt import Tokenizer, tasks
from biogpt.checkpoint.pipeline import checkpoint_hash
from biogpt.cli import main
from biogpt.reproduce import Settings, reproduce
from biogpt.reproduce.stages import training_time
from biogpt.tasks.evaluation import score_file
from biogpt.tasks.predictions import PredictionsFile
from biogpt.training import loop

pytestmark = [needs_data, pytest.mark.usefixtures("one_thread")]

TASKS = ("bc5cdr", "ddi", "pubmedqa", "hoc")  # the paper's, but KD-DTI: no training split
BATCH = 4  # two batches of the 8 quick test examples: a run can stop between them


@pytest.fixture(scope="module")
def base(saved_random_model) -> Path:
    """A tiny random base model with the released vocabulary and 1024 positions."""
    return saved_random_model()


@pytest.fixture(scope="module")
def quick_run(base, tmp_path_factory, one_thread) -> Path:
    """`reproduce --quick` of the default tasks, never stopped: the reference run."""
    out = tmp_path_factory.mktemp("quick") / "run"
    reproduce(str(base), out, None, DATA, quick=True, batch_size=BATCH, progress=False)
    return out


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def refused(capsys, *argv: str) -> str:
    """The one error line of `biogpt reproduce ARGV`, which must exit with 2."""
    code = main(["reproduce", *argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith("[")]
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("biogpt reproduce: error: ")
    return lines[0]


# --- the whole run -------------------------------------------------------------------------


def test_quick_run_writes_every_file_the_report_reads(quick_run, base):
    record = read(quick_run / "reproduce.json")
    assert record["command"] == "reproduce"
    assert record["model"] == str(base.resolve())
    assert record["checkpoint_hash"] == checkpoint_hash(base)
    assert record["tasks"] == list(TASKS) and record["quick"] is True
    assert record["data"] == str(DATA.resolve())
    settings = record["settings"]
    assert settings["quick"] is True
    assert (settings["train_limit"], settings["epochs"], settings["test_limit"]) == (16, 1, 8)
    # The caps are recorded as departures from each task's own recipe.
    assert settings["recipe_changes"]["bc5cdr"]["max_epochs"] == {"paper": 100, "used": 1}
    assert settings["recipe_changes"]["hoc"]["max_epochs"] == {"paper": 0, "used": 1}
    assert "max_updates" not in settings["recipe_changes"]["hoc"]  # 20,000: not capped
    assert set(record["estimate"]["tasks"]) == set(TASKS)
    # The estimate counts the tokens fine-tuning trains on: 16 examples, one epoch.
    tokenizer = Tokenizer.from_pretrained(base)
    tokenizer.add_tokens(tasks.get("bc5cdr").prompt())
    samples = [
        tasks.encode_example(tokenizer, tasks.get("bc5cdr"), example)
        for example in tasks.get("bc5cdr").load("train", DATA)[:16]
    ]
    counted = record["estimate"]["tasks"]["bc5cdr"]
    assert (counted["train_tokens"], counted["updates"]) == (sum(len(s[0]) for s in samples), 1)
    assert record["package"].keys() == {"version", "commit", "dirty"}
    assert "cpu" in record["hardware"]
    # The report holds each task's numbers as result.json has them.
    report = read(quick_run / "report" / "report.json")
    for name in TASKS:
        metrics = read(quick_run / name / "result.json")["metrics"]
        values = {r["metric"]: r["value"] for r in report["results"] if r["task"] == name}
        assert values and all(values[metric] == metrics[metric] for metric in values)
        assert tasks.get(name).main_metric in values

    for name in TASKS:
        task_dir = quick_run / name
        result = read(task_dir / "result.json")
        trained = read(task_dir / "trained.json")
        assert (result["task"], result["split"], result["limit"]) == (name, "test", 8)
        assert (task_dir / "train" / "run.json").is_file()
        assert (task_dir / "test.predictions.jsonl.meta.json").is_file()
        assert result["predictions"] == "test.predictions.jsonl"
        assert result["model"] == str((task_dir / trained["model"]).resolve())
        assert result["checkpoint_hash"] == checkpoint_hash(result["model"])
        assert result["template_version"] == tasks.get(name).template_version
        assert result["decoding"] == {
            "strategy": "greedy", "max_new_tokens": 16, "dtype": "fp32", "batch_size": BATCH,
            "device": "cpu",
        }  # fmt: skip
        assert (
            result["quick"] is True
            and result["recipe_changes"] == (settings["recipe_changes"][name])
        )
        assert (trained["updates"], trained["epochs"]) == (1, 1)  # 16 examples < 32k tokens
        assert result["tokens_per_s"] > 0 and result["train_seconds"] > 0
        # The metrics are those `biogpt score` gives the predictions file.
        task = tasks.get(name)
        examples = task.load("test", DATA)[:8]
        assert result["metrics"] == score_file(task, examples, task_dir / "test.predictions.jsonl")
        lines = (task_dir / "test.predictions.jsonl").read_text().splitlines()
        assert [json.loads(line)["id"] for line in lines] == [ex.id for ex in examples]
    # RE averages its last epochs' checkpoints (the recipe), HoC keeps the last one.
    assert read(quick_run / "bc5cdr" / "trained.json")["model"] == "train/averaged"
    assert read(quick_run / "hoc" / "trained.json")["model"].startswith("train/checkpoints/")


def test_a_run_stopped_while_predicting_resumes_to_the_same_files(
    quick_run, base, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    append = PredictionsFile.append

    def stop_after_the_first_batch(self, batch):
        append(self, batch)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(PredictionsFile, "append", stop_after_the_first_batch)
        with pytest.raises(KeyboardInterrupt):
            reproduce(str(base), out, ["hoc"], DATA, quick=True, batch_size=BATCH, progress=False)
    predictions = out / "hoc" / "test.predictions.jsonl"
    assert len(predictions.read_text().splitlines()) == BATCH
    assert not (out / "hoc" / "result.json").exists()
    weights = next((out / "hoc" / "train" / "checkpoints").glob("*/model.safetensors"))
    trained_at = weights.stat().st_mtime_ns

    assert main(["reproduce", "--out", str(out), "--resume"]) == 0
    stdout, stderr = capsys.readouterr()
    assert "hoc: fine-tuned before" in stderr and "after the 4 already there" in stderr
    assert weights.stat().st_mtime_ns == trained_at  # the finished stage is not redone
    reference = quick_run / "hoc"
    assert predictions.read_bytes() == (reference / "test.predictions.jsonl").read_bytes()
    result, expected = read(out / "hoc" / "result.json"), read(reference / "result.json")
    assert result["metrics"] == expected["metrics"]
    # The times count every call's work: the clock the batches kept, the log's updates.
    assert result["predict_seconds"] == read(out / "hoc" / "predict_time.json")["seconds"] > 0
    assert result["train_seconds"] == round(
        training_time(out / "hoc" / "train" / "log.jsonl")[0], 3
    )
    assert result["checkpoint_hash"] == expected["checkpoint_hash"]
    assert "hoc          micro_f1" in stdout and "quick" in stdout

    # A finished run started again does nothing but print its table.
    results_at = (out / "hoc" / "result.json").stat().st_mtime_ns
    assert main(["reproduce", "--out", str(out), "--resume"]) == 0
    assert "hoc: done before" in capsys.readouterr().err
    assert (out / "hoc" / "result.json").stat().st_mtime_ns == results_at

    # --overwrite replaces it with a new run.
    again = ["--model", str(base), "--out", str(out), "--data", str(DATA), "--task", "hoc",
             "--quick", "--test-limit", "2"]  # fmt: skip
    assert main(["reproduce", *again, "--overwrite"]) == 0
    capsys.readouterr()
    assert read(out / "hoc" / "result.json")["limit"] == 2
    assert len(predictions.read_text().splitlines()) == 2


# --- flags ---------------------------------------------------------------------------------


def test_a_resumed_run_refuses_a_changed_flag_naming_both_values(quick_run, capsys):
    line = refused(capsys, "--out", str(quick_run), "--resume", "--epochs", "2")
    assert line.endswith(
        f"--epochs 2: the run in {quick_run} was started with --epochs 1; start a new run "
        "(--out) or leave --epochs out"
    )
    assert "--task hoc: the run in" in refused(
        capsys, "--out", str(quick_run), "--resume", "--task", "hoc"
    )
    assert "was started with --dtype fp32" in refused(
        capsys, "--out", str(quick_run), "--resume", "--dtype", "bf16"
    )


def test_a_run_directory_with_files_needs_resume_or_overwrite(quick_run, base, tmp_path, capsys):
    line = refused(capsys, "--model", str(base), "--out", str(quick_run), "--data", str(DATA))
    assert "not empty; pass --resume" in line
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    line = refused(capsys, "--model", str(base), "--out", str(other), "--overwrite")
    assert "not deleting them" in line and (other / "notes.txt").exists()
    assert "no reproduce.json" in refused(capsys, "--out", str(other), "--resume")


def test_kd_dti_is_refused_when_named_and_skipped_by_default(base, tmp_path, capsys):
    out = tmp_path / "run"
    line = refused(capsys, "--model", str(base), "--out", str(out), "--data", str(DATA),
                   "--task", "kd-dti")  # fmt: skip
    assert "--task kd-dti: cannot be fine-tuned: BioGPT's release does not distribute" in line
    assert not out.exists()
    # By default it is left out with a line on stderr; the others are estimated.
    code = main(["reproduce", "--model", str(base), "--data", str(DATA), "--estimate-only",
                 "--train-limit", "4", "--test-limit", "2"])  # fmt: skip
    stdout, stderr = capsys.readouterr()
    assert code == 0 and "skipping kd-dti: BioGPT's release" in stderr
    rows = [line.split()[0] for line in stdout.splitlines()[2:-1]]
    assert rows == ["bc5cdr", "ddi", "pubmedqa", "hoc"]


def test_estimate_only_prints_the_recipes_work_and_writes_nothing(base, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["reproduce", "--model", str(base), "--out", str(out), "--data", str(DATA),
                 "--task", "hoc", "--task", "bc5cdr", "--train-limit", "40", "--estimate-only"])  # fmt: skip
    stdout, _ = capsys.readouterr()
    assert code == 0 and not out.exists()
    rows = {line.split()[0]: line.split() for line in stdout.splitlines()[2:-1]}
    # HoC trains 20,000 updates, BC5CDR 100 epochs: 40 examples make one update an epoch.
    assert rows["hoc"][1:3] == ["40", "20,000"]
    assert rows["bc5cdr"][1:3] == ["40", "100"]
    assert stdout.splitlines()[-1].startswith("total: ")


def test_caps_only_lower_the_recipe_and_are_recorded_as_changes():
    hoc, bc5cdr = tasks.get("hoc"), tasks.get("bc5cdr")
    capped = Settings("m", TASKS, None, epochs=3, max_updates=50_000, seed=9)
    assert (capped.train_config(hoc).max_epochs, capped.train_config(hoc).max_updates) == (
        3, 20_000,
    )  # fmt: skip
    assert capped.train_config(bc5cdr).max_epochs == 3
    assert capped.train_config(bc5cdr).seed == 9
    # A cap on a recipe without that bound (0: none) is a bound the recipe did not have.
    assert capped.recipe_changes(bc5cdr) == {
        "max_epochs": {"paper": 100, "used": 3}, "max_updates": {"paper": 0, "used": 50_000},
    }  # fmt: skip
    assert Settings("m", TASKS, None, max_updates=10).recipe_changes(hoc) == {
        "max_updates": {"paper": 20_000, "used": 10}
    }
    assert Settings("m", TASKS, None).recipe_changes(bc5cdr) == {}
    quick = Settings("m", TASKS, None, quick=True, test_limit=3).with_quick()
    assert (quick.train_limit, quick.test_limit, quick.max_new_tokens) == (16, 3, 16)
    assert Settings("m", TASKS, None, dtype="bf16").recipe_changes(hoc) == {
        "dtype": {"paper": "fp32", "used": "bf16"}
    }
    # The optimisation replaced: every value given is used and named, whatever the recipe's.
    tuned = Settings("m", TASKS, None, lr=2e-4, warmup_updates=10, tokens_per_update=8192)
    config = tuned.train_config(bc5cdr)
    assert (config.lr, config.warmup_updates, config.tokens_per_update) == (2e-4, 10, 8192)
    assert tuned.recipe_changes(bc5cdr) == {
        "lr": {"paper": 1e-5, "used": 2e-4},
        "warmup_updates": {"paper": 100, "used": 10},
        "tokens_per_update": {"paper": 32768, "used": 8192},
    }
    assert Settings("m", TASKS, None, lr=1e-5).recipe_changes(bc5cdr) == {}  # the paper's own


def test_a_fine_tune_stopped_after_an_epoch_continues_to_the_same_model(
    base, tmp_path, monkeypatch
):
    flags = dict(train_limit=16, epochs=2, test_limit=2, max_new_tokens=4, progress=False)
    whole = tmp_path / "whole"
    reproduce(str(base), whole, ["hoc"], DATA, **flags)
    out = tmp_path / "stopped"
    save = loop.save_checkpoint

    def stop_after_saving(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", stop_after_saving)
        with pytest.raises(KeyboardInterrupt):
            reproduce(str(base), out, ["hoc"], DATA, **flags)
    assert not (out / "hoc" / "trained.json").exists()
    saved = out / "hoc" / "train" / "checkpoints"
    assert sorted(p.name for p in saved.iterdir() if p.is_dir()) == ["epoch1"]
    reproduce(None, out, resume=True, progress=False)
    trained = read(out / "hoc" / "trained.json")
    assert (trained["updates"], trained["epochs"]) == (2, 2)
    assert trained == {**read(whole / "hoc" / "trained.json"), "seconds": trained["seconds"],
                       "tokens_per_s": trained["tokens_per_s"]}  # fmt: skip
    weights = Path(trained["model"]) / "model.safetensors"
    assert (out / "hoc" / weights).read_bytes() == (whole / "hoc" / weights).read_bytes()
    assert (
        read(out / "hoc" / "result.json")["metrics"]
        == read(whole / "hoc" / "result.json")["metrics"]
    )
