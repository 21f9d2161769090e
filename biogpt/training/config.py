"""What shapes a training run (`TrainConfig`), what it returns (`TrainResult`), and the
learning-rate schedule.

Defaults follow BioGPT's fine-tuning (facts section 3, fairseq): Adam betas (0.9, 0.98),
eps 1e-8, weight decay 0.01 on every parameter, no clipping, inverse-sqrt schedule with a
linear warmup from 1e-7, about 32k tokens per update, fp32. Pretraining
(`biogpt.training.pretrain.PretrainConfig`) takes its optimiser defaults from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from biogpt.errors import BioGPTError

__all__ = ["DTYPES", "SCHEDULES", "TrainConfig", "TrainResult", "learning_rate"]

SCHEDULES = ("inverse_sqrt", "cosine", "constant")  # after the warmup
DTYPES = ("fp32", "bf16")  # bf16: autocast; weights and optimiser state stay fp32


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
        if self.schedule not in SCHEDULES:
            raise BioGPTError(f"schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.dtype not in DTYPES:
            raise BioGPTError(f"dtype {self.dtype!r}: expected 'fp32' or 'bf16'")
        if self.loss not in ("full", "target"):
            raise BioGPTError(f"loss {self.loss!r}: expected 'full' or 'target'")
        if self.max_epochs <= 0 and self.max_updates <= 0:
            raise BioGPTError("set max_epochs or max_updates (or both) to bound training")
        if self.max_tokens_per_batch <= 0:
            raise BioGPTError("max_tokens_per_batch must be positive")


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
