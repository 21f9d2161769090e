"""Fine-tune a pretrained BioGPT on a task, the paper's way.

The task decides the data, the prompt tokens and the hyper-parameters; the one training
loop (`biogpt.training.loop`) does the rest. The result is a self-contained model directory
(weights, config, tokenizer with the learned prompt tokens, and task.json naming the task:
`biogpt.tasks.recorded`) that `predict` and `evaluate` load directly. The run directory
records what the run was started with (run.json, `biogpt.training.settings`), so that
`--resume` continues that run and no other; `finetune_run` checks it all before any work.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from biogpt.api import BioGPT
from biogpt.checkpoint.pipeline import tokenizer_for
from biogpt.errors import BioGPTError
from biogpt.tasks import Example, Task, encode_example, get
from biogpt.tasks.base import default_data_dir
from biogpt.tasks.recorded import task_record, write_task_record
from biogpt.tokenizer import Tokenizer
from biogpt.training.config import TrainConfig, TrainResult, check_ranges
from biogpt.training.loop import train
from biogpt.training.settings import (
    RUN_FILE,
    check_out_dir,
    compare,
    holds_run,
    local_path,
    read_run,
    refuse_other_command,
)
from biogpt.training.state import seed_everything

Sample = tuple[list[int], list[int]]


def task_train_config(task: Task, **overrides: Any) -> TrainConfig:
    """The paper's settings for `task` (facts section 3), with any field overridden."""
    hp = task.hyperparameters
    config = TrainConfig(
        lr=hp.lr,
        warmup_updates=hp.warmup_updates,
        max_epochs=hp.max_epochs or 0,
        max_updates=hp.max_updates or 0,
        tokens_per_update=hp.tokens_per_update,
        average_last=hp.average_last_checkpoints if hp.average_last_checkpoints > 1 else 0,
    )
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def add_prompt_tokens(model: BioGPT, tokenizer: Tokenizer, task: Task) -> list[int]:
    """Make sure the task's learned prompt tokens exist in the tokenizer and the model."""
    missing = [t for t in task.prompt() if tokenizer.token_to_id(t) == tokenizer.unk_id]
    ids = tokenizer.add_tokens(missing) if missing else []
    if len(tokenizer) > model.config.vocab_size:
        model.resize_vocab(len(tokenizer))
    return ids


@dataclass
class FinetuneRun:
    """What a fine-tuning run trains, on what, and how: what its run.json records."""

    task: Task
    model: str  # the base model: an absolute path where it is a local one
    data: str | None  # the data root: an absolute path (None: not known, $BIOGPT_DATA unset)
    limit: int | None  # the first N training examples, or all
    validate: bool  # whether to report the validation loss
    config: TrainConfig

    def record(self) -> dict[str, Any]:
        """run.json's "finetune" section (the TrainConfig goes in its own, "train")."""
        return {
            "task": task_record(self.task),
            "model": self.model,
            "data": self.data,
            "limit": self.limit,
            "validate": self.validate,
        }


def finetune_run(
    out_dir: Path,
    recorded: dict[str, Any] | None,
    task: Task | str | None,
    model_path: str | Path | None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    validate: bool | None = None,
    **overrides: Any,
) -> FinetuneRun:
    """The run that `finetune` is asked for, checked before any work: values in range, and,
    resuming a run that `recorded` its settings, no setting given anew with another value
    (those left out, None, take the recorded ones). Errors name the flags."""
    unknown = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise BioGPTError(f"unknown TrainConfig fields: {', '.join(unknown)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    check_ranges(overrides)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise BioGPTError(f"--limit {limit}: expected a positive number of examples")
    task = get(task) if isinstance(task, str) else task
    given: dict[str, Any] = {"model": local_path(model_path), "data": local_path(data_dir),
                             "limit": limit, "validate": validate}  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    if recorded is None:
        if task is None or model_path is None:
            missing = " and ".join(
                f for f, v in (("--task", task), ("--model", model_path)) if not v
            )
            why = (
                f"; the run in {out_dir} records no settings to resume with"
                if holds_run(out_dir)
                else ""
            )
            raise BioGPTError(f"{missing}: required to start a run{why}")
        return FinetuneRun(
            task=task,
            model=given["model"],
            data=given.get("data", _default_data_root()),
            limit=limit,
            validate=True if validate is None else validate,
            config=task_train_config(task, **overrides),
        )
    before = recorded.get("finetune") or {}
    started = _recorded_task(out_dir, before)
    if task is not None and task.name != started.name:
        compare(out_dir, {"task": started.name}, {"task": task.name})
    if task is not None and task_record(task) != task_record(started):
        raise BioGPTError(
            f"--task {task.name}: the run in {out_dir} was started with other options "
            f"({task.options()} now, {started.options()} then); start a new run (--out)"
        )
    compare(out_dir, before, given)
    compare(out_dir, recorded["train"], overrides)  # the allowed changes: said by `train`
    try:
        config = replace(TrainConfig(**recorded["train"]), **overrides)
    except TypeError as err:
        raise BioGPTError(f"{out_dir / RUN_FILE}: not this version's settings ({err})") from None
    settings = {**before, **given}
    return FinetuneRun(
        task=started,
        model=settings["model"],
        data=settings.get("data"),
        limit=settings.get("limit"),
        validate=settings.get("validate", True),
        config=config,
    )


def _default_data_root() -> str | None:
    """$BIOGPT_DATA made absolute, recorded so that a resumed run reads the same data."""
    try:
        return local_path(default_data_dir())
    except BioGPTError:
        return None  # no data root: `task.load` says so


def _recorded_task(out_dir: Path, before: dict[str, Any]) -> Task:
    """The task of the run in `out_dir`, from its run.json, as this package builds it."""
    record = before.get("task") or {}
    try:
        task = get(record["task"], **(record.get("options") or {}))
    except (KeyError, TypeError):
        raise BioGPTError(
            f"{out_dir / RUN_FILE}: no task recorded that this package knows"
        ) from None
    if task_record(task) != record:
        raise BioGPTError(
            f"{out_dir / RUN_FILE}: the run was started with {task.name} as {record}, this "
            f"package builds it as {task_record(task)}; start a new run (--out)"
        )
    return task


def encode_within(
    tokenizer: Tokenizer,
    task: Task,
    examples: list[Example],
    positions: int,
    split: str,
    quiet: bool = False,
) -> list[Sample]:
    """The examples as training samples (ids, target mask), leaving out those longer than
    the model's `positions`, and saying how many on stderr. A long source is already cut
    (`max_source_positions`), so these are examples whose target alone is too long (DDI's
    longest lists of triples); fairseq's training leaves them out the same way. `quiet`
    says nothing (a caller that only counts the work)."""
    samples = [encode_example(tokenizer, task, ex, target_only=True) for ex in examples]
    kept = [sample for sample in samples if len(sample[0]) <= positions]
    if len(kept) < len(samples) and not quiet:
        print(
            f"{task.name}: {len(samples) - len(kept)} of {len(samples)} {split} examples are "
            f"longer than the model's {positions} positions and are left out",
            file=sys.stderr,
        )
    return kept


def finetune(
    task: Task | str | None,
    model_path: str | Path | None,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    validate: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    trust_pickle: bool = False,
    **overrides: Any,
) -> tuple[Path, TrainResult]:
    """Fine-tune `model_path` on `task`'s training split; returns (model directory, result).

    `limit` keeps the first N training examples (quick experiments, tests); `validate`
    (default True) reports the validation loss at epoch ends. `overrides` replace fields of
    the task's `TrainConfig` (lr, max_epochs, dtype, loss, ...). The run's settings are
    recorded in `out_dir/run.json`, and the task in every checkpoint (task.json), so that
    the model names its task. With `resume`, an interrupted run in `out_dir` continues
    where it stopped, with the settings it was started with: those left out (None) come
    from run.json, so `finetune(None, None, out_dir, resume=True)` continues a run, and one
    given with another value is refused (longer training excepted: `max_epochs`,
    `max_updates`). Every such check is done before the model is loaded.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir, resume, overwrite)
    recorded = read_run(out_dir) if resume else None
    if recorded is not None:
        refuse_other_command(out_dir, recorded, "finetune")
    run = finetune_run(out_dir, recorded, task, model_path, data_dir, limit, validate, **overrides)
    # Seed before anything random: the new prompt-token rows are drawn below (the loop
    # seeds again before training, or restores the RNG when resuming).
    seed_everything(run.config.seed)
    model = BioGPT.from_pretrained(run.model, trust_pickle=trust_pickle)
    tokenizer = tokenizer_for(run.model, model.config.vocab_size)
    add_prompt_tokens(model, tokenizer, run.task)

    examples = run.task.load("train", run.data)[: run.limit]
    if not examples:
        raise BioGPTError(f"{run.task.name}: the training split has no examples")
    # The mask marks the target; the loop uses it only when config.loss == "target".
    positions = model.config.max_positions
    samples = encode_within(tokenizer, run.task, examples, positions, "training")
    if not samples:
        raise BioGPTError(f"{run.task.name}: no training example fits the model's positions")
    valid = None
    if run.validate and "valid" in run.task.splits:
        valid_examples = run.task.load("valid", run.data)[: run.limit]
        valid = encode_within(tokenizer, run.task, valid_examples, positions, "validation")
    result = train(
        model,
        samples,
        run.config,
        out_dir,
        valid_samples=valid,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        tokenizer=tokenizer,
        record={"command": "finetune", "finetune": run.record()},
        save_extra=functools.partial(write_task_record, task=run.task),
    )
    final = result.averaged or result.last_checkpoint
    if final is None:
        raise BioGPTError(f"{out_dir}: training wrote no checkpoint")
    return Path(final), result
