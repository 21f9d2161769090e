"""The training loop: one loop for every task and for pretraining.

A task changes only the samples, their loss masks and the metric hook; the loop is always
the same: plan the epoch's updates (`biogpt.training.batching`), accumulate the gradient of
each update's micro-batches, take an optimiser step on the scheduled learning rate, log, and
checkpoint at epoch ends (and every `save_every_updates`) so that a killed job resumes to
the bit.

`train` sets a run up (the output directory, the data, the optimiser, a resumed state) and
hands it to `_TrainingRun`, which holds where the loop stands and has one method per phase:
an epoch, an update, the epoch's end (validation, task metrics, checkpoint), the finish.

Distributed (torchrun, `biogpt.training.pretrain`): every rank runs this same loop on its
own slice of each update's batches. The loss is divided by the update's *global* token
count, so the gradient DDP/FSDP average is the one a single process would compute on the
whole batch (derived at `biogpt.training.step.accumulate`). Only rank 0 writes files; every
rank keeps (and restores) its own RNG state.

The settings (`TrainConfig`, BioGPT's fine-tuning recipe by default) and the schedule live
in `biogpt.training.config`; one update's gradient in `biogpt.training.step`.

Layout of `out_dir`:
    run.json              the settings the run was started with (`biogpt.training.settings`)
    train_config.json     the TrainConfig of the latest call
    log.jsonl             one line per optimiser step, plus validation lines
    loss.png              loss curve (needs matplotlib, the `plot` extra)
    checkpoints/epoch{N}/ config.json, model.safetensors, tokenizer files, trainer_state.pt/.json
    checkpoints/update{U}/  the same, when a run stops mid-epoch (max_updates)
    checkpoints/last      the name of the newest checkpoint
    averaged/             mean of the last `average_last` epoch checkpoints
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
import torch.distributed as dist
from torch import nn

from biogpt.config import ModelConfig
from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text
from biogpt.training.batching import Batch, BatchSource, Sample, SampleBatches
from biogpt.training.config import TrainConfig, TrainResult, learning_rate
from biogpt.training.loss import TokenLoss
from biogpt.training.settings import (
    check_out_dir,
    compare,
    holds_run,
    read_run,
    say,
    write_run,
)
from biogpt.training.state import (
    PLOT_INTERVAL_S,
    average_checkpoints,
    barrier,
    gather_full_state,
    is_sharded,
    list_checkpoints,
    plot_run,
    prepare_out_dir,
    prune,
    restore,
    resume_point,
    rng_state,
    save_checkpoint,
    seed_everything,
    truncate_log,
    world,
)
from biogpt.training.step import accumulate, accumulate_gradients, evaluate_loss

if TYPE_CHECKING:
    from biogpt.tokenizer import Tokenizer

# The loop's public names, wherever they are defined (`from biogpt.training.loop import ...`).
__all__ = [
    "TrainConfig",
    "TrainResult",
    "accumulate_gradients",
    "average_checkpoints",
    "evaluate_loss",
    "learning_rate",
    "list_checkpoints",
    "train",
    "unwrap",
]


def train(
    model: nn.Module,
    train_samples: Sequence[Sample] | BatchSource,
    config: TrainConfig,
    out_dir: str | Path,
    valid_samples: Sequence[Sample] | BatchSource | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    tokenizer: Tokenizer | None = None,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    record: Mapping[str, Any] | None = None,
    save_extra: Callable[[Path], object] | None = None,
) -> TrainResult:
    """Train `model` (a causal LM returning `.logits`) on `train_samples`; write to `out_dir`.

    Samples are `(input_ids, loss_mask | None)`; a `BatchSource` may be passed instead.
    `valid_samples` give `valid_loss`/`valid_ppl` at every epoch end (and every
    `config.valid_every` updates), and `evaluate(model)` any task metrics (the model is in
    eval mode; the returned numbers are logged). `resume=True` continues from
    `out_dir/checkpoints/last` (or starts afresh if there is none) with the same losses an
    uninterrupted run would have, and only with the settings it was started with (its
    `run.json`: `config`, where only `max_epochs` and `max_updates` may grow; see
    `biogpt.training.settings`); `overwrite=True` deletes an earlier run there instead.
    `record` is what the caller adds to run.json (finetune's task and data, pretrain's
    config); `save_extra(folder)` writes any further files into every checkpoint folder
    (finetune's task.json), which `averaged/` then copies.
    `tokenizer` is saved into every checkpoint. A model prepared for CPU inference
    (`biogpt.cpu.prepare`) gets its plain layers back first (`biogpt.cpu.release`).

    Under torch.distributed, `model` may be DDP/FSDP around a `TokenLoss`, and each rank's
    source yields its own share of every update (see `biogpt.training.pretrain.ShardBatches`).
    """
    out_dir = Path(out_dir)
    lm = unwrap(model)
    _release_inference_layers(lm)  # before the optimiser takes the parameters
    # Sharded state dicts name parameters from the wrapped module: TokenLoss adds `lm.`.
    prefix = "lm." if isinstance(getattr(model, "module", model), TokenLoss) else ""
    if model is lm:
        model = TokenLoss(lm)  # keeps the fused loss's buffers from step to step
    source = _batch_source(train_samples, config, lm)
    valid = _batch_source(valid_samples, config, lm) if valid_samples is not None else None
    _claim_out_dir(out_dir, config, resume, overwrite, record or {})
    loop = _TrainingRun(
        config=config,
        out_dir=out_dir,
        model=model,
        lm=lm,
        prefix=prefix,
        optimizer=_optimizer(model, config),
        source=source,
        valid=valid,
        tokenizer=tokenizer,
        evaluate=evaluate,
        save_extra=save_extra,
    )
    loop.restore_or_seed(resume)
    return loop.run(progress)


def _release_inference_layers(lm: nn.Module) -> None:
    """Give a model prepared for CPU inference (`biogpt.cpu.prepare`) its plain layers back:
    training neither runs nor updates the engine's layers."""
    from biogpt.cpu import release

    release(lm)


def _claim_out_dir(
    out_dir: Path, config: TrainConfig, resume: bool, overwrite: bool, record: Mapping[str, Any]
) -> None:
    """Check a resumed run's settings against its run.json (every rank, so that all refuse
    alike); then rank 0 clears (or keeps, to resume) `out_dir` and records the settings
    there, and every rank waits for it, so none looks at `out_dir` before it is ready."""
    check_out_dir(out_dir, resume, overwrite)
    recorded = read_run(out_dir) if resume else None
    notes = compare(out_dir, recorded["train"], asdict(config)) if recorded else []
    barrier()  # every rank has looked at `out_dir` before rank 0 changes it
    if world()[0] == 0:
        if resume and recorded is None and holds_run(out_dir):
            say(f"{out_dir} records no settings (no run.json: an older run); continuing it "
                "without checking that they are the same")  # fmt: skip
        for note in notes:
            say(f"continuing {out_dir} with {note}")
        prepare_out_dir(out_dir, resume, overwrite)
        write_run(out_dir, {**record, "train": asdict(config)})
        atomic_write_text(
            out_dir / "train_config.json", json.dumps(asdict(config), indent=2) + "\n"
        )
    barrier()


def _batch_source(
    samples: Sequence[Sample] | BatchSource, config: TrainConfig, lm: nn.Module
) -> BatchSource:
    """`samples` as the loop reads them: a `BatchSource` as it is, samples batched by
    `SampleBatches` with the model's pad id and length limit."""
    if hasattr(samples, "updates"):
        return samples  # type: ignore[return-value]
    model_config = getattr(lm, "config", None)
    return SampleBatches(
        samples,
        config.max_tokens_per_batch,
        config.tokens_per_update,
        config.seed,
        target_only=config.loss == "target",
        pad_id=getattr(model_config, "pad_token_id", ModelConfig.pad_token_id),
        max_positions=getattr(model_config, "max_positions", None),
    )


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over every parameter of `model`, at the warmup's first learning rate.

    torch's AdamW is fairseq's Adam with weight decay: both decay decoupled from the
    gradient (p -= lr * wd * p) and bias-correct the moments. fairseq decays every
    parameter, biases and LayerNorms included, so nothing is excluded here either.
    foreach=True: multi-tensor updates, also on CPU where torch's default is a loop.
    """
    return torch.optim.AdamW(
        model.parameters(),
        lr=config.warmup_init_lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
        foreach=True,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The bare LM inside DDP (`.module`), `TokenLoss` (`.lm`) and torch.compile wrappers."""
    while True:
        wrapped = getattr(model, "module", None)  # DDP, FSDP1
        compiled = getattr(model, "_orig_mod", None)  # torch.compile(module)
        if isinstance(model, TokenLoss):
            model = model.lm
        elif isinstance(wrapped, nn.Module):
            model = wrapped
        elif isinstance(compiled, nn.Module):
            model = compiled
        else:
            return model


@dataclass
class _TrainingRun:
    """One call of `train`: what it trains, with what, and where the loop stands.

    `step`, `epoch` and `position` are what a checkpoint stores to resume to the bit: the
    optimiser updates done in all, the epoch in progress (1-based) and the updates of that
    epoch done. Every rank runs the same loop; only rank 0 writes files.
    """

    config: TrainConfig
    out_dir: Path
    model: nn.Module  # what the loop calls: a TokenLoss, or DDP/FSDP around one
    lm: nn.Module  # the bare LM inside: what checkpoints hold and `evaluate` is given
    prefix: str  # the wrapper's name for the LM in sharded state dicts ("lm." or "")
    optimizer: torch.optim.Optimizer
    source: BatchSource
    valid: BatchSource | None
    tokenizer: Tokenizer | None
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None
    save_extra: Callable[[Path], object] | None = None  # more files for each checkpoint
    step: int = 0
    epoch: int = 1
    position: int = 0
    validated_at: int = -1  # the step of the last validation, so an epoch end does not repeat it
    restored: Path | None = None  # the checkpoint a resumed run continues from
    notices: set[str] = field(default_factory=set)  # loss.png problems already reported
    # Set from the above (`__post_init__`):
    rank: int = field(init=False)
    ranks: int = field(init=False)  # the world size
    writes_files: bool = field(init=False)  # rank 0 only
    checkpoints: Path = field(init=False)  # out_dir/checkpoints
    log_path: Path = field(init=False)  # out_dir/log.jsonl
    # Set by `run`:
    result: TrainResult = field(init=False)
    total_updates: int = field(init=False)  # the schedule's length (for "cosine")
    log: TextIO = field(init=False)  # log.jsonl on rank 0, os.devnull elsewhere
    bar: Any = field(init=False)  # the tqdm progress bar (disabled off rank 0)
    last_plot: float = field(init=False)  # time.monotonic() of the last loss.png

    def __post_init__(self) -> None:
        self.rank, self.ranks = world()
        self.writes_files = self.rank == 0
        self.checkpoints = self.out_dir / "checkpoints"
        self.log_path = self.out_dir / "log.jsonl"

    # --- Start and end ---

    def restore_or_seed(self, resume: bool) -> None:
        """Continue from `checkpoints/last` when resuming and there is one; else seed afresh."""
        path = resume_point(self.out_dir) if resume else None
        if path is not None:
            state = restore(path, self.model, self.lm, self.optimizer, self.rank, self.prefix)
            self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
            self.restored = path  # the result's checkpoint, should there be nothing left to do
            if state["epoch_done"]:
                self.epoch, self.position = self.epoch + 1, 0
            if self.writes_files:
                truncate_log(self.log_path, self.step)
        else:
            # Ranks draw different dropout masks; rank 0's stream is a single process's.
            seed_everything(self.config.seed + self.rank)
            if resume and self.writes_files:
                print(
                    f"biogpt: nothing to resume in {self.out_dir} (no checkpoint yet); "
                    "starting the run from its beginning",
                    file=sys.stderr,
                )
            if self.writes_files and self.log_path.exists():
                self.log_path.unlink()  # resume=True but no checkpoint yet: start from scratch

    def run(self, progress: bool) -> TrainResult:
        """Train epoch after epoch until `max_epochs` or `max_updates`, then finish the run."""
        from tqdm.auto import tqdm

        self.total_updates = self._schedule_length()
        self.result = TrainResult(
            steps=self.step, epochs=self.epoch - 1, log=self.log_path, last_checkpoint=self.restored
        )
        self.bar = tqdm(
            total=self.total_updates,
            initial=self.step,
            disable=not (progress and self.writes_files),
            unit="update",
        )
        self.model.train()
        self.last_plot = time.monotonic()
        log_file = self.log_path if self.writes_files else os.devnull
        with open(log_file, "a", encoding="utf-8") as self.log, self.bar:
            while self._epochs_left() and not self._out_of_updates():
                if not self._train_epoch():
                    break  # stopped mid-epoch by max_updates
                self._end_epoch()
        return self._finish()

    def _schedule_length(self) -> int:
        """Updates in the whole run: what "cosine" decays over and the progress bar counts."""
        if self.config.max_updates > 0:
            return self.config.max_updates
        return sum(self.source.updates_in_epoch(e) for e in range(1, self.config.max_epochs + 1))

    def _finish(self) -> TrainResult:
        """Average the last epochs (`average_last`), draw the loss curve, wait for every rank."""
        self.result.steps = self.step
        if self.writes_files and self.config.average_last > 0:
            self.result.averaged = self._average_last_epochs()
        if self.writes_files:
            plot_run(self.out_dir, self.notices)
        barrier()
        return self.result

    def _average_last_epochs(self) -> Path | None:
        """`averaged/`: the mean of the last `average_last` epoch checkpoints (fewer: said)."""
        epoch_ends = [path for _, done, path in list_checkpoints(self.checkpoints) if done]
        chosen = epoch_ends[-self.config.average_last :]
        if len(chosen) < self.config.average_last:
            print(
                f"biogpt: averaging {len(chosen)} epoch checkpoints, fewer than asked",
                file=sys.stderr,
            )
        return average_checkpoints(chosen, self.out_dir / "averaged") if chosen else None

    # --- Epochs and updates ---

    def _epochs_left(self) -> bool:
        return self.config.max_epochs <= 0 or self.epoch <= self.config.max_epochs

    def _out_of_updates(self) -> bool:
        return self.config.max_updates > 0 and self.step >= self.config.max_updates

    def _train_epoch(self) -> bool:
        """The updates of the epoch in progress, from `position`; whether it ran to its end.

        A run stopped mid-epoch checkpoints its exact position, so resuming continues there.
        """
        for batches in self.source.updates(self.epoch, self.position):
            self._update(batches)
            if self._every(self.config.valid_every) and self.valid is not None:
                self._validate_and_log(f"update {self.step}")
            if self._out_of_updates():
                break
            if self._every(self.config.save_every_updates):
                self.log.flush()
                if not self._at_epoch_end():  # the epoch end saves its own
                    self._checkpoint(epoch_done=False)
        if not self._at_epoch_end():
            self._checkpoint(epoch_done=False)
            return False
        return True

    def _every(self, interval: int) -> bool:
        """Whether the update just done is a multiple of `interval` (0: never)."""
        return interval > 0 and self.step % interval == 0

    def _at_epoch_end(self) -> bool:
        return self.position >= self.source.updates_in_epoch(self.epoch)

    def _update(self, batches: Sequence[Batch]) -> None:
        """One optimiser step on the scheduled learning rate, and its line in the log."""
        lr = learning_rate(self.step, self.config, self.total_updates)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        began = time.perf_counter()
        loss, target_tokens, tokens = accumulate(self.model, batches, self.config.dtype)
        clipped: dict[str, Any] = {}
        if self.config.clip_norm > 0:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
            clipped["grad_norm"] = float(norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step, self.position = self.step + 1, self.position + 1
        speed = tokens / (time.perf_counter() - began)  # all ranks' tokens
        self._write(
            {"step": self.step, "epoch": self.epoch, "loss": loss, "lr": lr, "tokens": tokens,
             "target_tokens": target_tokens, "tokens_per_s": speed, **clipped}
        )  # fmt: skip
        self.result.losses.append(loss)
        self.bar.update(1)
        if self._every(self.config.log_every):
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{speed:.0f}")
            self.log.flush()

    def _end_epoch(self) -> None:
        """Validate (unless the last update just did), run the task metrics, checkpoint."""
        metrics = self._validate() if self.validated_at != self.step else {}
        if self.evaluate is not None:
            metrics.update(self._task_metrics(self.evaluate))
        if metrics:
            self._log_metrics(f"epoch {self.epoch}", metrics)
        self.log.flush()
        last_epoch = self.epoch == self.config.max_epochs
        if self.config.save_every_epoch or last_epoch or self._out_of_updates():
            self._checkpoint(epoch_done=True)
        self.result.epochs = self.epoch
        if self.writes_files and time.monotonic() - self.last_plot > PLOT_INTERVAL_S:
            plot_run(self.out_dir, self.notices)
            self.last_plot = time.monotonic()
        self.epoch, self.position = self.epoch + 1, 0

    # --- Metrics and the log ---

    def _validate(self) -> dict[str, Any]:
        """valid_loss and valid_ppl on the validation source; nothing without one."""
        if self.valid is None:
            return {}
        loss = evaluate_loss(self.model, self.valid, self.config.dtype)
        self.result.valid_loss = loss
        return {"valid_loss": loss, "valid_ppl": math.exp(min(loss, 700.0))}

    def _validate_and_log(self, when: str) -> None:
        self._log_metrics(when, self._validate())
        self.validated_at = self.step
        self.log.flush()

    def _task_metrics(
        self, evaluate: Callable[[nn.Module], Mapping[str, float]]
    ) -> Mapping[str, float]:
        """`evaluate(lm)` in eval mode. It must leave the LM's layers plain: the optimiser
        holds their parameters, which preparing for inference would replace."""
        self.model.eval()
        metrics = evaluate(self.lm)
        _refuse_inference_layers(self.lm)
        self.model.train()
        return metrics

    def _log_metrics(self, when: str, metrics: Mapping[str, Any]) -> None:
        """A log line of `metrics` at this step, and the same on the console."""
        self._write({"step": self.step, "epoch": self.epoch, **metrics})
        self.bar.write(f"{when}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def _write(self, record: dict[str, Any]) -> None:
        self.log.write(json.dumps(record) + "\n")

    # --- Checkpoints ---

    def _checkpoint(self, epoch_done: bool) -> None:
        """Save `checkpoints/epoch{N}` (at an epoch end) or `checkpoints/update{U}`.

        A collective: every rank calls it; rank 0 writes.
        """
        # Collectives first, on every rank: each rank's RNG, and sharded weights/optimiser.
        rank_rngs: list[Any] = [None] * self.ranks
        if self.ranks > 1:
            dist.all_gather_object(rank_rngs, rng_state())
        weights, optimizer_state = None, None
        if is_sharded(self.model):
            weights, optimizer_state = gather_full_state(self.model, self.optimizer, self.prefix)
        if self.writes_files:
            state = self._trainer_state(epoch_done, optimizer_state, rank_rngs)
            name = f"epoch{self.epoch}" if epoch_done else f"update{self.step}"
            self.result.last_checkpoint = save_checkpoint(
                self.checkpoints, name, self.lm, state, self.tokenizer, weights, self.save_extra
            )
            prune(self.checkpoints, self.config.keep_last, self.config.average_last)
        barrier()

    def _trainer_state(
        self, epoch_done: bool, optimizer_state: dict[str, Any] | None, rank_rngs: list[Any]
    ) -> dict[str, Any]:
        """What resuming needs besides the weights (`biogpt.training.state.restore`)."""
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "epoch_done": epoch_done,
            "optimizer": (
                optimizer_state if optimizer_state is not None else self.optimizer.state_dict()
            ),
            "scheduler": {"schedule": self.config.schedule, "update": self.step},
            "rng": rng_state(),
            "config": asdict(self.config),
        }
        if self.ranks > 1:
            state["rng_ranks"] = rank_rngs  # every rank resumes its own dropout stream
        return state


def _refuse_inference_layers(lm: nn.Module) -> None:
    """Fail where an `evaluate` hook left the LM prepared for CPU inference."""
    from biogpt.cpu import is_prepared

    if is_prepared(lm):
        raise BioGPTError(
            "evaluate() left the model prepared for CPU inference; call "
            "biogpt.cpu.release(model) before it returns (training updates the plain layers)"
        )
