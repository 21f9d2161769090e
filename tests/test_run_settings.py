"""A training run holds to what it was started with: run.json records the settings and
`--resume` refuses a changed one (more epochs or updates excepted); each fine-tuned
checkpoint names its task (task.json); the same command gives the same log; bad values,
run directories, checkpoints, shards and config files are refused in one line naming the
flag, before any work; finetune and pretrain spell the same setting alike."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from shared_data import needs_data

from biogpt import BioGPT, ModelConfig, tasks
from biogpt.cli import main
from biogpt.errors import BioGPTError
from biogpt.tasks.recorded import task_record
from biogpt.training.finetune import finetune
from biogpt.training.loop import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def start_args(model: Path, data: Path) -> list[str]:
    """A fine-tuning run of two updates an epoch (one document each), no validation."""
    return ["--task", "bc5cdr", "--model", str(model), "--data", str(data), "--limit", "2",
            "--no-valid", "--max-tokens-per-batch", "300", "--tokens-per-update", "100"]  # fmt: skip


def biogpt(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `biogpt ARGV`."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def succeeds(capsys, *argv: str) -> str:
    """The stderr of `biogpt ARGV`, which must exit with 0."""
    code, _, err = biogpt(capsys, *argv)
    assert code == 0, err
    return err


def refused(capsys, *argv: str) -> str:
    """The one error line of `biogpt ARGV`, which must exit with 2 and print nothing else."""
    code, out, err = biogpt(capsys, *argv)
    lines = [line for line in err.splitlines() if "deprecated" not in line]
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"biogpt {argv[0]}: error: ")
    return lines[0]


def log_of(run: Path) -> list[dict]:
    """log.jsonl without `tokens_per_s`, the one field that measures the wall clock."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


# --- run.json and --resume ------------------------------------------------------------------


@needs_data
def test_run_json_records_what_a_finetune_run_was_started_with(
    base_model, data_root, tmp_path, capsys
):
    succeeds(capsys, "finetune", *start_args(base_model, data_root), "--out", str(tmp_path / "r"),
             "--max-updates", "1", "--lr", "1e-4", "--seed", "7")  # fmt: skip
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert record["command"] == "finetune"
    assert record["finetune"] == {
        "task": task_record(tasks.get("bc5cdr")),
        "model": str(base_model.resolve()),
        "data": str(data_root.resolve()),
        "limit": 2,
        "validate": False,
    }
    config = TrainConfig(**record["train"])
    assert (config.lr, config.seed, config.max_updates, config.tokens_per_update) == (
        1e-4, 7, 1, 100,
    )  # fmt: skip
    assert config.max_epochs == tasks.get("bc5cdr").hyperparameters.max_epochs


@needs_data
def test_resume_refuses_a_changed_setting_naming_its_flag_and_both_values(
    base_model, data_root, tmp_path, capsys
):
    run = tmp_path / "r"
    succeeds(capsys, "finetune", *start_args(base_model, data_root), "--out", str(run),
             "--max-updates", "1")  # fmt: skip
    resume = ("finetune", "--out", str(run), "--resume")
    assert refused(capsys, *resume, "--lr", "2e-5").endswith(
        f"--lr 2e-05: the run in {run} was started with --lr 1e-05; start a new run (--out) "
        "or leave --lr out"
    )
    assert f"--seed 4: the run in {run} was started with --seed 1" in refused(
        capsys, *resume, "--seed", "4"
    )
    assert "--task ddi: " in refused(capsys, *resume, "--task", "ddi")
    assert "was started with --task bc5cdr" in refused(capsys, *resume, "--task", "ddi")
    other = tmp_path / "other-model"
    shutil.copytree(base_model, other)
    assert f"--model {other}: " in refused(capsys, *resume, "--model", str(other))
    assert "--limit 1: " in refused(capsys, *resume, "--limit", "1")
    shorter = refused(capsys, *resume, "--max-updates", "2", "--epochs", "1")
    assert "--epochs 1: " in shorter and "longer, not shorter" in shorter
    # The library says the same, in the same words.
    with pytest.raises(BioGPTError, match=r"^--lr 2e-05: the run in .* --lr 1e-05"):
        finetune(None, None, run, resume=True, progress=False, lr=2e-5)
    # And `train` itself holds a resumed run to its TrainConfig.
    recorded = TrainConfig(**json.loads((run / "run.json").read_text())["train"])
    with pytest.raises(BioGPTError, match=r"^--warmup-updates 5: the run in"):
        train(BioGPT(ModelConfig.from_name("tiny")), [([2, 5, 6], None)],
              TrainConfig(**{**vars(recorded), "warmup_updates": 5}), run, resume=True,
              progress=False)  # fmt: skip


@needs_data
def test_resume_alone_continues_the_run_and_may_train_longer(
    base_model, data_root, tmp_path, capsys
):
    start = ("finetune", *start_args(base_model, data_root))
    succeeds(capsys, *start, "--out", str(tmp_path / "straight"), "--max-updates", "3")
    succeeds(capsys, *start, "--out", str(tmp_path / "resumed"), "--max-updates", "1")
    err = succeeds(capsys, "finetune", "--out", str(tmp_path / "resumed"), "--resume",
                   "--max-updates", "3")  # fmt: skip
    assert f"continuing {tmp_path / 'resumed'} with --max-updates 3 (was 1)" in err
    assert log_of(tmp_path / "resumed") == log_of(tmp_path / "straight")
    assert len(log_of(tmp_path / "straight")) == 3
    # More epochs, the other change allowed; the new bound is recorded.
    succeeds(capsys, *start, "--out", str(tmp_path / "epochs"), "--epochs", "1")
    err = succeeds(capsys, "finetune", "--out", str(tmp_path / "epochs"), "--resume",
                   "--epochs", "2")  # fmt: skip
    assert "with --epochs 2 (was 1)" in err
    assert json.loads((tmp_path / "epochs" / "run.json").read_text())["train"]["max_epochs"] == 2
    assert [r["epoch"] for r in log_of(tmp_path / "epochs")] == [1, 1, 2, 2]
    # Resuming a finished run has nothing left to do, and says where its model is.
    code, out, err = biogpt(capsys, "finetune", "--out", str(tmp_path / "resumed"), "--resume")
    assert code == 0 and "continuing" not in err and out.startswith("fine-tuned model: ")


@needs_data
def test_an_older_run_without_run_json_resumes_unchecked_and_says_so(
    base_model, data_root, tmp_path, capsys
):
    run = tmp_path / "old"
    start = ("finetune", *start_args(base_model, data_root), "--out", str(run))
    succeeds(capsys, *start, "--max-updates", "1")
    (run / "run.json").unlink()
    line = refused(capsys, "finetune", "--out", str(run), "--resume")
    assert "--task and --model: required" in line and "records no settings" in line
    err = succeeds(capsys, *start, "--max-updates", "2", "--resume")
    assert "records no settings (no run.json" in err and "without checking" in err
    assert (run / "run.json").is_file()  # checked from now on


def test_finetune_needs_task_and_model_unless_resuming(tmp_path, capsys):
    line = refused(capsys, "finetune", "--out", str(tmp_path / "r"), "--model", "mini")
    assert line.endswith("--task: required to start a run")
    assert not (tmp_path / "r").exists()


# --- task.json beside every fine-tuned model ------------------------------------------------


@needs_data
def test_every_checkpoint_and_the_average_record_the_task(base_model, data_root, tmp_path, capsys):
    run = tmp_path / "r"
    code, out, err = biogpt(capsys, "finetune", *start_args(base_model, data_root),
                            "--out", str(run), "--epochs", "2", "--average-last", "2")  # fmt: skip
    assert code == 0, err
    folders = [run / "checkpoints" / "epoch1", run / "checkpoints" / "epoch2", run / "averaged"]
    assert f"fine-tuned model: {run / 'averaged'}" in out
    bc5cdr = tasks.get("bc5cdr")
    for folder in folders:
        record = json.loads((folder / tasks.TASK_FILE).read_text())
        assert record["task"] == "bc5cdr" and record["prompt_tokens"] == bc5cdr.prompt()
        assert tasks.recorded_task(folder).name == "bc5cdr"


# --- the same command, the same log ---------------------------------------------------------


@needs_data
def test_the_same_seed_gives_the_same_log_from_a_base_and_a_fine_tuned_model(
    base_model, data_root, tmp_path, capsys
):
    def run(model: Path, out: str, *extra: str) -> list[dict]:
        succeeds(capsys, "finetune", *start_args(model, data_root), "--out", str(tmp_path / out),
                 "--max-updates", "3", "--lr", "1e-3", "--warmup-updates", "1", *extra)  # fmt: skip
        return log_of(tmp_path / out)

    first, again = run(base_model, "a"), run(base_model, "b")
    assert first == again and first != run(base_model, "c", "--seed", "2")
    tuned = tmp_path / "a" / "checkpoints" / "update3"
    assert tasks.recorded_task(tuned).name == "bc5cdr"  # its prompt rows exist already
    second, twice = run(tuned, "d"), run(tuned, "e")
    assert second == twice and second != first
    # Interrupted after one update and resumed: the log of the uninterrupted run.
    succeeds(capsys, "finetune", *start_args(tuned, data_root), "--out", str(tmp_path / "f"),
             "--max-updates", "1", "--lr", "1e-3", "--warmup-updates", "1")  # fmt: skip
    succeeds(capsys, "finetune", "--out", str(tmp_path / "f"), "--resume", "--max-updates", "3")
    assert log_of(tmp_path / "f") == second


# --- bad values, refused before any work ----------------------------------------------------

FINETUNE_BAD = [
    (["--lr", "-1"], "--lr -1.0: expected a positive"),
    (["--lr", "0"], "--lr 0.0: expected a positive"),
    (["--epochs", "0"], "--epochs 0: expected a positive"),
    (["--epochs", "-2"], "--epochs -2: expected a positive"),
    (["--max-updates", "0"], "--max-updates 0: expected a positive"),
    (["--warmup-updates", "-1"], "--warmup-updates -1: expected 0 or more"),
    (["--tokens-per-update", "0"], "--tokens-per-update 0: expected a positive"),
    (["--max-tokens-per-batch", "0"], "--max-tokens-per-batch 0: expected a positive"),
    (["--limit", "0"], "--limit 0: expected a positive"),
    (["--average-last", "-1"], "--average-last -1: expected 0 (no averaging) or more"),
    (["--seed", "-1"], "--seed -1: expected a seed from 0 to 4294967295"),
    (["--seed", str(2**32)], f"--seed {2**32}: expected a seed from 0"),
]


@pytest.mark.parametrize(("flags", "message"), FINETUNE_BAD)
def test_finetune_refuses_a_bad_value_before_any_work(flags, message, tmp_path, capsys):
    out = tmp_path / "r"
    line = refused(capsys, "finetune", "--task", "bc5cdr", "--model", "mini", "--out", str(out),
                   "--data", str(tmp_path), *flags)  # fmt: skip
    assert message in line
    assert not out.exists()


def test_finetune_refuses_run_directories_it_cannot_use(tmp_path, capsys):
    start = ("finetune", "--task", "bc5cdr", "--model", "mini", "--data", str(tmp_path))
    file = tmp_path / "file.txt"
    file.write_text("not a run\n")
    assert f"--out {file}: a file, not a run directory" in refused(
        capsys, *start, "--out", str(file)
    )
    below = file / "run"
    assert f"--out {below}: {file} is a file" in refused(capsys, *start, "--out", str(below))
    both = refused(capsys, *start, "--out", str(tmp_path / "r"), "--resume", "--overwrite")
    assert "--resume and --overwrite: pass one" in both


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_finetune_refuses_an_out_it_cannot_write(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    line = refused(capsys, "finetune", "--task", "bc5cdr", "--model", "mini",
                   "--out", str(locked / "r"))  # fmt: skip
    assert f"cannot write in {locked}" in line


@needs_data
@pytest.mark.parametrize("damaged", ["model.safetensors", "trainer_state.pt"])
def test_resume_from_a_truncated_checkpoint_names_the_file(
    damaged, base_model, data_root, tmp_path, capsys
):
    run = tmp_path / "r"
    succeeds(capsys, "finetune", *start_args(base_model, data_root), "--out", str(run),
             "--max-updates", "1")  # fmt: skip
    path = run / "checkpoints" / "update1" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a disk that filled up
    line = refused(capsys, "finetune", "--out", str(run), "--resume", "--max-updates", "2")
    assert f"{path}: cannot resume from it" in line


# --- pretrain -------------------------------------------------------------------------------


def write_shards(root: Path, vocab_size: int = 512, tokens: int = 1200) -> Path:
    """A hand-made shard directory (`biogpt.corpus.shards` format 1) of random documents."""
    rng = np.random.default_rng(0)
    manifest = {"format": 1, "dtype": "uint16", "vocab_size": vocab_size, "eos": 2,
                "splits": {}, "tokenizer": None, "complete": True}  # fmt: skip
    for split, count in (("train", tokens), ("valid", 200)):
        stream = rng.integers(4, min(vocab_size, 512), count).astype("<u2")
        stream[::20] = 2  # documents of 19 tokens and their </s>
        (root / split).mkdir(parents=True)
        stream.tofile(root / split / "00000.bin")
        manifest["splits"][split] = [
            {"file": f"{split}/00000.bin", "tokens": count, "documents": int((stream == 2).sum())}
        ]
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def pretrain_args(data: Path, out: Path) -> list[str]:
    return ["pretrain", "--data", str(data), "--out", str(out), "--preset", "tiny",
            "--tokens-per-sample", "16", "--blocks-per-batch", "2", "--tokens-per-update", "64",
            "--valid-every", "0", "--save-every", "0", "--warmup-updates", "1"]  # fmt: skip


def test_pretrain_records_its_config_and_resume_holds_to_it(tmp_path, capsys):
    data = write_shards(tmp_path / "shards")
    run = tmp_path / "run"
    succeeds(capsys, *pretrain_args(data, run), "--max-updates", "2", "--lr", "1e-3")
    record = json.loads((run / "run.json").read_text())
    assert record["command"] == "pretrain"
    assert record["pretrain"]["lr"] == 1e-3 and record["pretrain"]["data"] == str(data.resolve())
    line = refused(capsys, "pretrain", "--out", str(run), "--resume", "--lr", "5e-4")
    assert f"--lr 0.0005: the run in {run} was started with --lr 0.001" in line
    err = succeeds(capsys, "pretrain", "--out", str(run), "--resume", "--max-updates", "3")
    assert f"continuing {run} with --max-updates 3 (was 2)" in err
    assert [r["step"] for r in log_of(run)] == [1, 2, 3]
    # A fine-tuning run is not continued by pretrain, nor the other way round.
    assert "started by `biogpt pretrain`" in refused(capsys, "finetune", "--out", str(run),
                                                     "--resume")  # fmt: skip


PRETRAIN_BAD = [
    (["--lr", "-1"], "--lr -1.0: expected a positive"),
    (["--max-updates", "0"], "--max-updates 0: expected a positive"),
    (["--warmup-updates", "-1"], "--warmup-updates -1: expected 0 or more"),
    (["--tokens-per-update", "0"], "--tokens-per-update 0: expected a positive"),
    (["--tokens-per-sample", "1"], "--tokens-per-sample 1: expected 2 or more"),
    (["--blocks-per-batch", "0"], "--blocks-per-batch 0: expected 1 or more"),
    (["--clip-norm", "-1"], "--clip-norm -1.0: expected 0 (no clipping) or more"),
    (["--valid-every", "-1"], "--valid-every -1: expected 0 (never) or more"),
    (["--seed", "-3"], "--seed -3: expected a seed from 0"),
    (["--max-steps", "0"], "--max-updates 0: expected a positive"),  # the old spelling
]


@pytest.mark.parametrize(("flags", "message"), PRETRAIN_BAD)
def test_pretrain_refuses_a_bad_value_before_any_work(flags, message, tmp_path, capsys):
    out = tmp_path / "r"
    line = refused(capsys, *pretrain_args(write_shards(tmp_path / "s"), out), *flags)
    assert message in line
    assert not out.exists()


def test_pretrain_refuses_shards_of_a_larger_vocabulary_before_building_the_model(
    tmp_path, capsys, monkeypatch
):
    data = write_shards(tmp_path / "shards", vocab_size=1000)
    built = []
    monkeypatch.setattr(BioGPT, "__init__", lambda *a, **k: built.append(1))
    line = refused(capsys, *pretrain_args(data, tmp_path / "r"), "--max-updates", "1")
    assert "vocabulary of 1000 ids, more than the 512 token rows of --preset tiny" in line
    assert "pass --preset biogpt" in line and not built


def test_pretrain_refuses_data_that_is_not_token_shards(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = refused(capsys, *pretrain_args(empty, tmp_path / "r"))
    assert f"--data {empty}: not token shards" in line and "biogpt binarize" in line
    missing = tmp_path / "missing"
    assert f"--data {missing}: no such directory" in refused(
        capsys, *pretrain_args(missing, tmp_path / "r")
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr = \n", "not valid TOML"),
        ("learning_rate = 1e-3\n", "unknown keys learning_rate"),
        ('lr = "fast"\n', "--lr fast: expected a number"),
        ("max_updates = 1.5\n", "--max-updates 1.5: expected a whole number"),
        ("max_updates = -4\n", "--max-updates -4: expected a positive"),
        ("compile = 1\n", "--compile 1: expected true or false"),
    ],
)
def test_pretrain_refuses_a_bad_config_file_in_one_line(text, message, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(text)
    line = refused(capsys, "pretrain", "--config", str(config), "--data", str(tmp_path))
    assert line.startswith(f"biogpt pretrain: error: --config {config}: ") and message in line


def test_a_json_config_that_is_not_an_object_is_refused(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text("[1, 2]\n")
    assert "expected keys and values" in refused(capsys, "pretrain", "--config", str(config))


# --- the same flags in both commands --------------------------------------------------------


def test_both_commands_spell_updates_and_warmup_alike_and_keep_the_old_spellings(tmp_path, capsys):
    from biogpt.cli import build_parser

    for command in ("finetune", "pretrain"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        text = capsys.readouterr().out
        assert done.value.code == 0 and "--max-updates" in text and "--warmup-updates" in text
        assert "--max-steps" not in text and "--warmup " not in text

    old = build_parser().parse_args(["finetune", "--warmup", "4", "--out", "o"])
    assert old.warmup == 4  # moved to warmup_updates, with a note, when the command runs
    data = write_shards(tmp_path / "shards")
    argv = pretrain_args(data, tmp_path / "run")
    argv.remove("--warmup-updates")
    argv.remove("1")
    err = succeeds(capsys, *argv, "--max-steps", "1")
    assert "note: --max-steps is deprecated; use --max-updates" in err
    assert [r["step"] for r in log_of(tmp_path / "run")] == [1]
    # Both spellings given: the last wins, as for one flag given twice.
    succeeds(capsys, *argv, "--max-steps", "1", "--max-updates", "2", "--overwrite")
    assert [r["step"] for r in log_of(tmp_path / "run")] == [1, 2]


@pytest.fixture(scope="module")
def base_model(saved_random_model) -> Path:
    """A random one-layer model with the released vocabulary (dropout on), saved with it."""
    return saved_random_model(
        hidden_size=32, num_heads=2, num_layers=1, intermediate_size=64,
        dropout=0.1, attention_dropout=0.1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def data_root(bc5cdr_two_documents) -> Path:
    return bc5cdr_two_documents
