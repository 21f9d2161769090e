"""Fine-tune a pretrained BioGPT on a task, the paper's way.

The task decides the data, the prompt tokens and the hyper-parameters; the one training
loop (`biogpt.training.loop`) does the rest. The result is a self-contained model directory
(weights, config, tokenizer with the learned prompt tokens) that `predict` and `evaluate`
load directly.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from biogpt.api import BioGPT
from biogpt.checkpoint.pipeline import tokenizer_for
from biogpt.errors import BioGPTError
from biogpt.tasks import Task, encode_example, get
from biogpt.tokenizer import Tokenizer
from biogpt.training.config import TrainConfig, TrainResult
from biogpt.training.loop import train
from biogpt.training.state import seed_everything


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


def finetune(
    task: Task | str,
    model_path: str | Path,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    validate: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    trust_pickle: bool = False,
    **overrides: Any,
) -> tuple[Path, TrainResult]:
    """Fine-tune `model_path` on `task`'s training split; returns (model directory, result).

    `limit` keeps the first N training examples (quick experiments, tests). `overrides`
    replace fields of the task's `TrainConfig` (lr, max_epochs, dtype, loss, ...).
    With `resume`, an interrupted run in `out_dir` continues where it stopped.
    """
    task = get(task) if isinstance(task, str) else task
    config = task_train_config(task, **overrides)
    # Seed before anything random: the new prompt-token rows are drawn below (the loop
    # seeds again before training, or restores the RNG when resuming).
    seed_everything(config.seed)
    model = BioGPT.from_pretrained(model_path, trust_pickle=trust_pickle)
    tokenizer = tokenizer_for(model_path, model.config.vocab_size)
    add_prompt_tokens(model, tokenizer, task)

    examples = task.load("train", data_dir)[:limit]
    if not examples:
        raise BioGPTError(f"{task.name}: the training split has no examples")
    # The mask marks the target; the loop uses it only when config.loss == "target".
    samples = [encode_example(tokenizer, task, ex, target_only=True) for ex in examples]
    valid = None
    if validate and "valid" in task.splits:
        valid_examples = task.load("valid", data_dir)[:limit]
        valid = [encode_example(tokenizer, task, ex, target_only=True) for ex in valid_examples]
    result = train(
        model,
        samples,
        config,
        out_dir,
        valid_samples=valid,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        tokenizer=tokenizer,
    )
    final = result.averaged or result.last_checkpoint
    if final is None:
        raise BioGPTError(f"{out_dir}: training wrote no checkpoint")
    return Path(final), result
