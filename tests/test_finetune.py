"""End to end on CPU: fine-tune a small model on a handful of examples until it reproduces
them, then `biogpt predict` + `biogpt score` give a perfect score; the same weights saved in
the fairseq layout (prompt-token rows beyond dict.txt) load and predict the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from shared_data import DATA, needs_data

from biogpt import BioGPT, tasks
from biogpt.cli import main
from biogpt.training.finetune import finetune

pytestmark = needs_data


def small_data_root(root: Path) -> Path:
    """A data root with a few training examples: two BC5CDR documents, and one PubMedQA
    question of each answer (the official train split starts with a run of "yes")."""
    bc5cdr = json.loads((DATA / "bc5cdr" / "train.json").read_text())
    (root / "bc5cdr").mkdir(parents=True)
    two = dict(list(bc5cdr.items())[:2])
    (root / "bc5cdr" / "train.json").write_text(json.dumps(two))
    shutil.copyfile(
        DATA / "bc5cdr" / "train.entities.json", root / "bc5cdr" / "train.entities.json"
    )

    pqa = json.loads((DATA / "pubmedqa" / "pqal_fold0" / "train_set.json").read_text())
    chosen = {}
    for pmid, record in pqa.items():
        chosen.setdefault(record["final_decision"], (pmid, record))
    (root / "pubmedqa" / "pqal_fold0").mkdir(parents=True)
    three = dict(chosen.values())
    assert sorted(r["final_decision"] for r in three.values()) == ["maybe", "no", "yes"]
    (root / "pubmedqa" / "pqal_fold0" / "train_set.json").write_text(json.dumps(three))
    return root


@pytest.fixture(scope="module")
def base_model(saved_random_model) -> Path:
    """A random small model with the released vocabulary, saved with its tokenizer."""
    return saved_random_model(
        hidden_size=64, num_heads=4, intermediate_size=256, dropout=0.0, attention_dropout=0.0
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return small_data_root(tmp_path_factory.mktemp("data"))


def run(*argv: str) -> None:
    assert main(list(argv)) == 0


@pytest.fixture(scope="module")
def tuned(base_model: Path, data_root: Path, tmp_path_factory):
    """fine-tune(task name) -> (model directory, TrainResult), each task trained once."""
    done: dict[str, tuple] = {}

    def get(task_name: str):
        if task_name not in done:
            done[task_name] = finetune(
                task_name, base_model, tmp_path_factory.mktemp(task_name), data_dir=data_root,
                validate=False, progress=False, lr=1e-2, warmup_updates=5, max_epochs=0,
                max_updates=150, tokens_per_update=10**6, loss="target",
                save_every_epoch=False, keep_last=1, average_last=0,
            )  # fmt: skip
        return done[task_name]

    return get


@pytest.mark.parametrize(("task_name", "metric"), [("bc5cdr", "f1"), ("pubmedqa", "accuracy")])
def test_finetune_predict_score_reproduces_the_examples(
    task_name: str, metric: str, tuned, data_root: Path, tmp_path: Path, capsys
) -> None:
    final, result = tuned(task_name)
    assert result.losses[-1] < 0.2 * result.losses[0]
    assert result.log.is_file()

    predictions = tmp_path / "predictions.jsonl"
    run("predict", "--task", task_name, "--model", str(final), "--split", "train",
        "--data", str(data_root), "--output", str(predictions))  # fmt: skip
    capsys.readouterr()
    run("score", "--task", task_name, "--split", "train", "--data", str(data_root),
        "--predictions", str(predictions))  # fmt: skip
    scores = json.loads(capsys.readouterr().out)
    assert scores[metric] == 1.0
    assert scores["missing"] == scores["unparseable"] == scores["unknown_ids"] == 0


def test_fine_tuned_fairseq_checkpoint_with_prompt_rows_predicts(
    fairseq_checkpoint, tuned, data_root: Path, tmp_path: Path, capsys
) -> None:
    final, _ = tuned("bc5cdr")
    model = BioGPT.from_pretrained(final)
    assert model.config.vocab_size == 42384 + 9  # the nine learned prompt rows
    # fairseq's layout: the released dict.txt + bpecodes, which do not name the prompt rows.
    fairseq_dir = tmp_path / "fairseq"
    fairseq_dir.mkdir()
    vocab = Path(tasks.__file__).parents[1] / "tokenizer" / "vocab" / "biogpt"
    for name in ("dict.txt", "bpecodes"):
        shutil.copyfile(vocab / name, fairseq_dir / name)
    fairseq_checkpoint(fairseq_dir / "checkpoint.pt", model)

    outputs = {}
    for label, path in (("hf", final), ("fairseq", fairseq_dir)):
        run("predict", "--task", "bc5cdr", "--model", str(path), "--split", "train",
            "--data", str(data_root))  # fmt: skip
        outputs[label] = capsys.readouterr().out
    assert outputs["hf"] == outputs["fairseq"]
    examples = tasks.get("bc5cdr").load("train", data_root)
    predictions = {
        json.loads(line)["id"]: json.loads(line)["prediction"]
        for line in outputs["fairseq"].splitlines()
    }
    assert tasks.score_predictions(tasks.get("bc5cdr"), examples, predictions)["f1"] == 1.0


def test_evaluate_writes_a_report_and_extract_gives_structure(
    tuned, data_root: Path, tmp_path: Path, capsys
) -> None:
    final, _ = tuned("bc5cdr")
    report = tmp_path / "report.json"
    run("evaluate", "--task", "bc5cdr", "--model", str(final), "--split", "train",
        "--data", str(data_root), "--report", str(report))  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(report.read_text())
    assert printed["f1"] == written["f1"] == 1.0
    assert written["task"] == "bc5cdr" and written["split"] == "train"
    # The report is not overwritten without being asked.
    assert main(["evaluate", "--task", "bc5cdr", "--model", str(final), "--split", "train",
                 "--data", str(data_root), "--report", str(report)]) == 2  # fmt: skip
    assert "--overwrite" in capsys.readouterr().err

    task = tasks.get("bc5cdr")
    example = task.load("train", data_root)[0]
    run("extract", "--task", "bc5cdr", "--model", str(final), example.source)
    result = json.loads(capsys.readouterr().out)
    pairs = {(r["head"], r["tail"]) for r in result["bc5cdr"]}
    assert pairs == set(task.parse(example.target, example).value)
    assert result["answer"].startswith("the relation between")
    assert result["unparseable"] == 0


def test_predict_from_raw_inputs_equals_predict_on_the_split(
    tuned, data_root: Path, tmp_path: Path, capsys
) -> None:
    final, _ = tuned("pubmedqa")
    examples = tasks.get("pubmedqa").load("train", data_root)
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"id": e.id, "text": e.source}) + "\n" for e in examples))
    outputs = []
    for source in (["--split", "train", "--data", str(data_root)], ["--input", str(raw)]):
        run("predict", "--task", "pubmedqa", "--model", str(final), *source)
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert len(outputs[0].splitlines()) == len(examples) == 3


def test_examples_longer_than_the_positions_are_left_out_and_counted(capsys) -> None:
    """DDI's training split has documents whose list of triples alone runs past 1024 tokens;
    they are left out (as fairseq's training does) and the count is said, not a crash."""
    from biogpt.checkpoint import tokenizer_for
    from biogpt.tasks import encode_example
    from biogpt.training.finetune import encode_within

    task = tasks.get("ddi")
    tokenizer = tokenizer_for("mini", 42384)
    tokenizer.add_tokens(task.prompt())
    examples = task.load("train", DATA)
    lengths = [len(encode_example(tokenizer, task, ex)[0]) for ex in examples]
    too_long = sum(length > 1024 for length in lengths)
    assert too_long > 0  # else this test shows nothing
    kept = encode_within(tokenizer, task, examples, 1024, "training")
    assert len(kept) == len(examples) - too_long
    assert max(len(ids) for ids, _ in kept) <= 1024
    assert (
        f"ddi: {too_long} of {len(examples)} training examples are longer"
        in capsys.readouterr().err
    )
    assert encode_within(tokenizer, task, examples, max(lengths), "training") == [
        encode_example(tokenizer, task, ex, target_only=True) for ex in examples
    ]
