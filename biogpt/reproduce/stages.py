"""The three stages of one task of a reproduce run, each resumable, each skipped once done.

    DIR/TASK/train/                    fine-tune: `biogpt.training.finetune` (its run dir)
    DIR/TASK/trained.json              the fine-tune is finished: which model, how long
    DIR/TASK/test.predictions.jsonl    predict: greedy answers, a batch at a time
    DIR/TASK/result.json               score: the metrics, and everything that made them

A stage killed part way continues where it stopped when the run is started again: an
interrupted fine-tune through `finetune(resume=True)` (to the bit: the loop checkpoints its
position), an interrupted prediction through `PredictionsFile` (the finished file is byte
for byte the uninterrupted one's). A finished stage leaves its file, and a rerun reads that
file instead of doing the work again: trained.json says fine-tuning is over (resuming a
finished `finetune` would load the model and re-average its checkpoints), a predictions file
with every test id says predicting is, result.json says the task is done.

trained.json names the model relative to DIR/TASK (and so does the predictions file's meta
record, beside the weights' hash), so that a run directory may move between a stop and its
resume; result.json names it by its absolute path, as a report shows it.

Times count every call's work, a killed one's too: `train_seconds` is the updates' time
summed from the run's log (loading and saving left out), `predict_seconds` the decoding time
of every batch written, kept in DIR/TASK/predict_time.json as batches finish; `tokens_per_s`
is the training throughput, from the log.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from biogpt.api import BioGPT
from biogpt.checkpoint.pipeline import checkpoint_hash, tokenizer_for
from biogpt.config import ModelConfig
from biogpt.io import atomic_write_text
from biogpt.reproduce.settings import Settings
from biogpt.tasks import Task
from biogpt.tasks.evaluation import max_new_tokens_for, predict, score_file
from biogpt.tasks.predictions import PredictionsFile
from biogpt.training.finetune import finetune
from biogpt.training.plot import read_log
from biogpt.training.settings import holds_run

TRAIN_DIR = "train"
TRAINED_FILE = "trained.json"
PREDICTIONS_FILE = "test.predictions.jsonl"
PREDICT_TIME_FILE = "predict_time.json"
RESULT_FILE = "result.json"
SPLIT = "test"


def say(message: str) -> None:
    """A progress line on stderr, stamped with the wall clock."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def count(n: int, word: str) -> str:
    """`1 update`, `3 updates`."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def run_task(
    task: Task, settings: Settings, out: Path, progress: bool = True, trust_pickle: bool = False
) -> dict[str, Any]:
    """Fine-tune, predict and score `task` in `out/TASK`, skipping the stages already
    done; its result.json record."""
    task_dir = out / task.name
    done = task_dir / RESULT_FILE
    if done.is_file():
        say(f"{task.name}: done before ({done}); kept")
        return json.loads(done.read_text(encoding="utf-8"))
    task_dir.mkdir(parents=True, exist_ok=True)
    trained = train_stage(task, settings, task_dir, progress, trust_pickle)
    return predict_and_score(task, settings, task_dir, trained, progress)


# --------------------------------------------------------------------------------------------
# Fine-tune
# --------------------------------------------------------------------------------------------


def train_stage(
    task: Task, settings: Settings, task_dir: Path, progress: bool, trust_pickle: bool = False
) -> dict[str, Any]:
    """Fine-tune with the task's recipe and the run's caps (trained.json once finished):
    `{"model": the fine-tuned model's folder relative to task_dir, "updates", "epochs",
    "seconds", "tokens_per_s"}`. The model is the average of the last epochs' checkpoints
    where the recipe averages (RE tasks), else the last checkpoint: `finetune` decides."""
    marker = task_dir / TRAINED_FILE
    if marker.is_file():
        trained = json.loads(marker.read_text(encoding="utf-8"))
        say(f"{task.name}: fine-tuned before ({trained['model']}); kept")
        return trained
    run_dir = task_dir / TRAIN_DIR
    config = settings.train_config(task)
    started = holds_run(run_dir)
    continuing = " (continuing)" if started else ""
    bounds = [
        count(n, what)
        for n, what in ((config.max_epochs, "epoch"), (config.max_updates, "update"))
        if n
    ]
    examples = count(settings.train_limit, "example") if settings.train_limit else "every example"
    say(f"{task.name}: fine-tuning{continuing}: lr {config.lr}, at most {' and '.join(bounds)}, "
        f"on {examples}")  # fmt: skip
    began = time.perf_counter()
    final, result = finetune(
        task,
        settings.model,
        run_dir,
        data_dir=settings.data,
        limit=settings.train_limit,
        validate=False,  # the recipe picks no checkpoint by it: it would only cost time
        resume=started,  # a stopped run continues
        progress=progress,
        trust_pickle=trust_pickle,
        **asdict(config),
    )
    seconds = time.perf_counter() - began
    update_seconds, speed_of_updates = training_time(run_dir / "log.jsonl")
    trained = {
        "model": str(final.relative_to(task_dir)),
        "updates": result.steps,
        "epochs": result.epochs,
        "seconds": round(update_seconds, 3),
        "tokens_per_s": speed_of_updates,
    }
    atomic_write_text(marker, json.dumps(trained, indent=2) + "\n")
    speed = f"{trained['tokens_per_s']:,.0f} tokens/s" if trained["tokens_per_s"] else "no update"
    say(f"{task.name}: fine-tuned in {seconds:.1f} s ({count(result.steps, 'update')}, {speed}) "
        f"-> {final}")  # fmt: skip
    return trained


def training_time(log: Path) -> tuple[float, float | None]:
    """(seconds, tokens per second) of every update in a run's log, those of a stopped call
    included: each line holds its tokens and their rate, so its time is their quotient;
    (0.0, None) without updates."""
    tokens = seconds = 0.0
    for record in read_log(log) if log.is_file() else []:
        if record.get("tokens_per_s"):
            tokens += record["tokens"]
            seconds += record["tokens"] / record["tokens_per_s"]
    return seconds, (round(tokens / seconds, 1) if seconds > 0 else None)


def read_clock(path: Path) -> float:
    """The seconds predict_time.json holds; 0.0 where a stop came before its first write."""
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


# --------------------------------------------------------------------------------------------
# Predict and score
# --------------------------------------------------------------------------------------------


def predict_and_score(
    task: Task, settings: Settings, task_dir: Path, trained: dict[str, Any], progress: bool
) -> dict[str, Any]:
    """Greedy answers to the test split (the paper's inference) into the predictions file,
    continuing one a stopped run left; then the score, as `biogpt score` computes it from
    that file, in result.json (written atomically: it marks the task done)."""
    model_dir = task_dir / trained["model"]
    digest = checkpoint_hash(model_dir)
    examples = task.load(SPLIT, settings.data)[: settings.test_limit]
    positions = ModelConfig.load(model_dir / "config.json").max_positions
    limit = settings.max_new_tokens or max_new_tokens_for(task, positions, 0)
    # What a continued file must have been written with; the batch size and the device
    # change no answer (`biogpt.cli.tasks.run_record`).
    run = {
        "task": task.name,
        "task options": task.options(),
        "model": trained["model"],
        "checkpoint_hash": digest,
        "dtype": settings.dtype,
        "max_new_tokens": settings.max_new_tokens,
        "split": SPLIT,
        "data": settings.data,
    }
    path, clock = task_dir / PREDICTIONS_FILE, task_dir / PREDICT_TIME_FILE
    with PredictionsFile(path, run, [ex.id for ex in examples], resume=True) as out:
        todo = examples[len(out.done) :]
        # the decoding time of the batches already written (none when the file starts anew)
        seconds = read_clock(clock) if out.done else 0.0
        if todo:
            after = f", after the {len(out.done)} already there" if out.done else ""
            say(f"{task.name}: predicting {len(todo)} test examples{after}")
            model = BioGPT.from_pretrained(model_dir, dtype=settings.dtype, device=settings.device)
            tokenizer = tokenizer_for(model_dir, model.config.vocab_size)
            began = time.perf_counter()

            def append(batch: list[tuple[str, str]]) -> None:
                out.append(batch)
                spent = seconds + time.perf_counter() - began
                atomic_write_text(clock, json.dumps({"seconds": round(spent, 3)}) + "\n")

            predict(
                model.eval(),
                tokenizer,
                task,
                todo,
                settings.batch_size,
                settings.max_new_tokens,
                progress=progress,
                on_batch=append,
            )
            seconds += time.perf_counter() - began
            atomic_write_text(clock, json.dumps({"seconds": round(seconds, 3)}) + "\n")
            say(f"{task.name}: predicted in {seconds:.1f} s ({len(examples) / seconds:.2f} "
                f"examples/s)")  # fmt: skip
    metrics = score_file(task, examples, path)
    result = {
        "task": task.name,
        "split": SPLIT,
        "model": str(model_dir.resolve()),
        "checkpoint_hash": digest,
        "template_version": task.template_version,
        "decoding": {
            "strategy": "greedy",
            "max_new_tokens": limit,
            "dtype": settings.dtype,
            "batch_size": settings.batch_size,
            "device": settings.device,
        },
        "metrics": metrics,
        "predictions": PREDICTIONS_FILE,
        "limit": settings.test_limit,
        "train_seconds": trained["seconds"],
        "predict_seconds": round(seconds, 3),
        "tokens_per_s": trained["tokens_per_s"],
        "data": settings.data,
        "quick": settings.quick,
        "updates": trained["updates"],
        "epochs": trained["epochs"],
        "recipe_changes": settings.recipe_changes(task),
    }
    atomic_write_text(task_dir / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    scored = f"{task.main_metric} {metrics[task.main_metric]:.4f}"
    say(f"{task.name}: {scored} -> {task_dir / RESULT_FILE}")
    return result
