"""What shapes a training run (`TrainConfig`), what it returns (`TrainResult`), and the
learning-rate schedule.

Defaults follow BioGPT's fine-tuning (facts section 3, fairseq): Adam betas (0.9, 0.98),
eps 1e-8, weight decay 0.01 on every parameter, no clipping, inverse-sqrt schedule with a
linear warmup from 1e-7, about 32k tokens per update, fp32. Pretraining
(`biogpt.training.pretrain.PretrainConfig`) takes its optimiser defaults from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError

__all__ = [
    "DTYPES",
    "FLAGS",
    "SCHEDULES",
    "TrainConfig",
    "TrainResult",
    "check_ranges",
    "flag",
    "learning_rate",
    "setting",
]

SCHEDULES = ("inverse_sqrt", "cosine", "constant")  # after the warmup
DTYPES = ("fp32", "bf16")  # bf16: autocast; weights and optimiser state stay fp32
LOSSES = ("full", "target")  # the whole sequence (the paper), or the target only


# --------------------------------------------------------------------------------------------
# Settings as the command line spells them
# --------------------------------------------------------------------------------------------

# The flag of `biogpt finetune` or `biogpt pretrain` that sets each field of `TrainConfig`,
# `PretrainConfig` or a fine-tuning run (task, model, data), where it is not `--field-name`.
# Errors about a setting name its flag, so a command-line user can act on them; a field that
# no flag sets is named as itself (`betas`).
FLAGS: dict[str, str] = {
    "max_epochs": "--epochs",
    "save_every_updates": "--save-every",
    "validate": "--no-valid",  # a switch that turns the setting off
    "save_every_epoch": "--save-last-only",  # likewise
}
# The fields that some flag sets under its own name (`--field-name`).
FLAGGED = {
    "task", "model", "data", "limit", "lr", "max_updates", "warmup_updates",
    "tokens_per_update", "max_tokens_per_batch", "dtype", "seed", "loss", "average_last",
    "preset", "init_from", "tokens_per_sample", "schedule", "clip_norm", "weight_decay",
    "blocks_per_batch", "compile", "activation_checkpointing", "distributed", "valid_every",
    "save_every", "device",
}  # fmt: skip


def flag(name: str) -> str:
    """The flag that sets field `name` (`--epochs` for max_epochs), or else `name` itself."""
    if name in FLAGS:
        return FLAGS[name]
    return "--" + name.replace("_", "-") if name in FLAGGED else name


def setting(name: str, value: Any) -> str:
    """Field `name` at `value` as a command line writes it: `--lr 1e-05`, `--no-valid`,
    `without --no-valid`, `--compile`; a field without a flag as `betas [0.9, 0.98]`."""
    if name in ("validate", "save_every_epoch"):  # switches that turn a setting off
        return flag(name) if value is False else f"without {flag(name)}"
    if isinstance(value, bool) and name in FLAGGED:
        return flag(name) if value else f"without {flag(name)}"
    return f"{flag(name)} {value}"


# Ranges of the numeric settings, by field: (lowest, highest, what the value is). None:
# unbounded. 0 keeps its meaning where a field gives it one (max_updates 0: no bound); the
# command line refuses such zeros itself where a flag has no use for them.
SEED_LIMIT = 2**32  # numpy's generators take seeds in [0, 2**32)
RANGES: dict[str, tuple[float, float | None, str]] = {
    "lr": (math.ulp(0.0), None, "a positive learning rate"),  # the least float above 0
    "warmup_updates": (0, None, "0 or more updates"),
    "warmup_init_lr": (0, None, "a learning rate of 0 or more"),
    "min_lr": (0, None, "a learning rate of 0 or more"),
    "weight_decay": (0, None, "0 or more"),
    "clip_norm": (0, None, "0 (no clipping) or more"),
    "max_epochs": (0, None, "0 (no bound) or more epochs"),
    "max_updates": (0, None, "0 (no bound) or more updates"),
    "tokens_per_update": (0, None, "0 or more tokens"),
    "max_tokens_per_batch": (1, None, "a positive number of tokens"),
    "seed": (0, SEED_LIMIT - 1, f"a seed from 0 to {SEED_LIMIT - 1}"),
    "keep_last": (0, None, "0 (keep all) or more checkpoints"),
    "average_last": (0, None, "0 (no averaging) or more checkpoints"),
    "log_every": (0, None, "0 or more updates"),
    "valid_every": (0, None, "0 (never) or more updates"),
    "save_every_updates": (0, None, "0 (never) or more updates"),
}


def check_ranges(values: Mapping[str, Any], ranges: Mapping[str, tuple] = RANGES) -> None:
    """A one-line error naming the flag of the first setting in `values` that is out of its
    range (`RANGES`), or of the wrong type, before any work is done."""
    for name, (low, high, what) in ranges.items():
        if name not in values:
            continue
        value = values[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        nan = value != value
        if not number or nan or value < low or (high is not None and value > high):
            raise BioGPTError(f"{setting(name, value)}: expected {what}")


@dataclass
class TrainConfig:
    """Everything that shapes a training run. Defaults are BioGPT's fine-tuning recipe."""

    lr: float = 1e-5  # peak learning rate (the paper: 1e-5 for most tasks, 1e-4 for DDI)
    warmup_updates: int = 100  # linear warmup length in optimiser updates
    warmup_init_lr: float = 1e-7  # where the warmup starts (fairseq's warmup_init_lr)
    schedule: str = "inverse_sqrt"  # "inverse_sqrt" | "cosine" | "constant", after warmup
    min_lr: float = 0.0  # where "cosine" ends at the last update
    betas: tuple[float, float] = (0.9, 0.98)  # fairseq's Adam betas for BioGPT
    eps: float = 1e-8
    weight_decay: float = 0.01  # decoupled, on every parameter, as fairseq's Adam does
    clip_norm: float = 0.0  # max global gradient norm; 0 = no clipping (BioGPT fine-tuning)
    max_epochs: int = 1  # stop after this many epochs; 0 = no bound (then max_updates must be set)
    max_updates: int = 0  # stop after this many optimiser updates in all; 0 = no bound
    tokens_per_update: int = 32768  # accumulate micro-batches until about this many real tokens
    max_tokens_per_batch: int = 4096  # micro-batch size: rows x padded length <= this
    dtype: str = "fp32"  # "fp32" | "bf16" (autocast; weights and optimiser stay fp32)
    seed: int = 1  # data order, dropout and any other randomness
    loss: str = "full"  # "full": whole sequence (the paper); "target": loss-mask positions only
    save_every_epoch: bool = True  # write a checkpoint at the end of every epoch
    keep_last: int = 2  # checkpoints kept (0 = all); the last `average_last` epochs are kept too
    average_last: int = 0  # average the last k epoch checkpoints into averaged/ (RE uses 5)
    log_every: int = 10  # refresh the progress bar and flush log.jsonl every n updates
    valid_every: int = 0  # also validate every n updates (pretraining); 0 = at epoch ends only
    save_every_updates: int = 0  # also checkpoint every n updates (long epochs); 0 = never

    def __post_init__(self) -> None:
        beta1, beta2 = self.betas  # a list after a JSON round trip
        self.betas = (beta1, beta2)
        for name, allowed in (("schedule", SCHEDULES), ("dtype", DTYPES), ("loss", LOSSES)):
            if getattr(self, name) not in allowed:
                raise BioGPTError(
                    f"{setting(name, getattr(self, name))}: expected {' or '.join(allowed)}"
                )
        check_ranges(vars(self))
        if self.max_epochs <= 0 and self.max_updates <= 0:
            raise BioGPTError("set --epochs or --max-updates (or both) to bound training")


@dataclass
class TrainResult:
    """What `train` did."""

    steps: int  # optimiser updates done in all, a resumed run's earlier ones included
    epochs: int  # epochs completed
    losses: list[float] = field(default_factory=list)  # training loss of each update of this call
    valid_loss: float | None = None  # after the last epoch, when valid_samples were given
    last_checkpoint: Path | None = None
    averaged: Path | None = None  # the averaged checkpoint, when average_last > 0
    log: Path | None = None


def learning_rate(update: int, config: TrainConfig, total_updates: int = 0) -> float:
    """The learning rate of the next update, after `update` updates are done.

    fairseq's inverse_sqrt: linear from warmup_init_lr to lr over warmup_updates, then
    lr * sqrt(warmup / update). "cosine" decays from lr to min_lr at `total_updates`;
    "constant" stays at lr. A warmup of 0 starts at lr.
    """
    peak, warmup = config.lr, config.warmup_updates
    if update < warmup:
        return config.warmup_init_lr + (peak - config.warmup_init_lr) * update / warmup
    if config.schedule == "constant":
        return peak
    if config.schedule == "inverse_sqrt":
        return peak * math.sqrt(max(warmup, 1) / max(update, 1))
    if total_updates <= warmup:
        return peak
    progress = min(1.0, (update - warmup) / (total_updates - warmup))
    return config.min_lr + (peak - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
