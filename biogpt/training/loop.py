"""The training loop: one loop for every task and for pretraining.

A task changes only the samples, their loss masks and the metric hook; the loop is always
the same: plan the epoch's updates (`biogpt.training.batching`), accumulate the gradient of each update's
micro-batches, take an optimiser step on the scheduled learning rate, log, and checkpoint at
epoch ends (and every `save_every_updates`) so that a killed job resumes to the bit.

Distributed (torchrun, `biogpt.training.pretrain`): every rank runs this same loop on its own slice
of each update's batches. The loss is divided by the update's *global* token count, so the
gradient DDP/FSDP average is the one a single process would compute on the whole batch.
Only rank 0 writes files; every rank keeps (and restores) its own RNG state.

Defaults follow BioGPT's fine-tuning (facts section 3, fairseq): Adam betas (0.9, 0.98),
eps 1e-8, weight decay 0.01 on every parameter, no clipping, inverse-sqrt schedule with a
linear warmup from 1e-7, about 32k tokens per update, fp32.

Layout of `out_dir`:
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text
from biogpt.training.batching import Batch, BatchSource, Sample, SampleBatches
from biogpt.training.loss import TokenLoss, batch_loss
from biogpt.training.state import (
    PLOT_INTERVAL_S,
    all_reduce_sum,
    average_checkpoints,
    barrier,
    gather_full_state,
    is_sharded,
    list_checkpoints,
    plot_run,
    prepare_out_dir,
    prune,
    restore,
    rng_state,
    save_checkpoint,
    seed_everything,
    truncate_log,
    world,
)

if TYPE_CHECKING:
    from biogpt.tokenizer import Tokenizer

__all__ = [
    "TrainConfig",
    "TrainResult",
    "accumulate_gradients",
    "average_checkpoints",
    "evaluate_loss",
    "learning_rate",
    "list_checkpoints",
    "train",
]

SCHEDULES = ("inverse_sqrt", "cosine", "constant")


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
        self.betas = tuple(self.betas)  # a list after a JSON round trip
        if self.schedule not in SCHEDULES:
            raise BioGPTError(f"schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.dtype not in ("fp32", "bf16"):
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


# --- Schedule and loss --------------------------------------------------------------------


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


def unwrap(model: nn.Module) -> nn.Module:
    """The bare LM inside DDP (`.module`), `TokenLoss` (`.lm`) and torch.compile wrappers."""
    while True:
        if isinstance(model, TokenLoss):
            model = model.lm
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module  # DDP, FSDP1
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile(module)
        else:
            return model


# --- Distributed: gradient sync (all no-ops in a single process) ------------------------


@contextmanager
def _gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-batches: only the update's last
    backward needs to synchronise (DDP/FSDP1 `no_sync`, FSDP2 `set_requires_gradient_sync`)."""
    if sync:
        yield
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def _accumulate(model: nn.Module, batches: Sequence[Batch], dtype: str) -> tuple[float, int, int]:
    """Backpropagate one update's micro-batches: (mean loss, target tokens, tokens), global.

    Loss normalisation: with W ranks each holding some of the update's batches, the loss of
    one big batch is sum_r L_r / N, N the trained tokens over *all* ranks (one all-reduce of
    the counts before the backward). Each rank backpropagates W * L_r / N; DDP and FSDP
    average gradients over ranks (divide by W), which leaves exactly grad(sum_r L_r / N):
    the single-process gradient, however the batch was split between ranks and micro-batches.
    """
    device = next(model.parameters()).device
    _, ranks = world()
    local = [float(sum(b.target_tokens for b in batches)), float(sum(b.tokens for b in batches))]
    total, tokens = all_reduce_sum(local, device)
    scale = ranks / max(1.0, total)
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        with _gradient_sync(model, sync=i == len(batches) - 1):
            with _autocast(device, dtype):
                loss = batch_loss(model, batch.input_ids.to(device), batch.labels.to(device))
            (loss * scale).backward()  # outside autocast, as torch advises
        loss_sum += loss.detach()
    if ranks > 1:
        dist.all_reduce(loss_sum)  # for the log only: the global mean loss
    return float(loss_sum) / max(1.0, total), int(total), int(tokens)  # one host sync


def accumulate_gradients(
    model: nn.Module, batches: Sequence[Batch], dtype: str = "fp32"
) -> tuple[float, int]:
    """Backpropagate one update's micro-batches; returns (mean loss per token, tokens).

    Each micro-batch's summed loss is divided by the trained tokens of the whole update (of
    every rank, when distributed), so the accumulated gradient is that of one big batch
    averaged per token, however the update was split. Batches are right-padded, so no
    attention mask is passed: under the causal mask real tokens never see padding, and
    attention takes the fast mask-free path.
    """
    loss, target_tokens, _ = _accumulate(model, batches, dtype)
    return loss, target_tokens


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate_loss(model: nn.Module, source: BatchSource, dtype: str = "fp32") -> float:
    """Mean loss per trained token over every batch of `source` (epoch 1), in eval mode.

    Distributed, each rank evaluates its own slice and the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, tokens = 0.0, 0
    for update in source.updates(1):
        for batch in update:
            with _autocast(device, dtype):
                loss = batch_loss(model, batch.input_ids.to(device), batch.labels.to(device))
            loss_sum += float(loss)
            tokens += batch.target_tokens
    model.train(was_training)
    loss_sum, tokens = all_reduce_sum([loss_sum, float(tokens)], device)
    return loss_sum / max(1.0, tokens)


# --- The loop -----------------------------------------------------------------------------


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
) -> TrainResult:
    """Train `model` (a causal LM returning `.logits`) on `train_samples`; write to `out_dir`.

    Samples are `(input_ids, loss_mask | None)`; a `BatchSource` may be passed instead.
    `valid_samples` give `valid_loss`/`valid_ppl` at every epoch end (and every
    `config.valid_every` updates), and `evaluate(model)` any task metrics (the model is in
    eval mode; the returned numbers are logged). `resume=True` continues from
    `out_dir/checkpoints/last` (or starts afresh if there is none) with the same losses an
    uninterrupted run would have; `overwrite=True` deletes an earlier run there instead.
    `tokenizer` is saved into every checkpoint.

    Under torch.distributed, `model` may be DDP/FSDP around a `TokenLoss`, and each rank's
    source yields its own share of every update (see `biogpt.training.pretrain.ShardBatches`).
    """
    from tqdm.auto import tqdm

    rank, ranks = world()
    main = rank == 0  # only rank 0 writes files
    lm = unwrap(model)
    # Sharded state dicts name parameters from the wrapped module: TokenLoss adds `lm.`.
    prefix = "lm." if isinstance(getattr(model, "module", model), TokenLoss) else ""
    if model is lm:
        model = TokenLoss(lm)  # keeps the fused loss's buffers from step to step
    out_dir = Path(out_dir)
    if main:
        prepare_out_dir(out_dir, resume, overwrite)
        atomic_write_text(
            out_dir / "train_config.json", json.dumps(asdict(config), indent=2) + "\n"
        )
    barrier()  # no rank looks at out_dir before rank 0 has cleared it
    ckpt_root, log_path = out_dir / "checkpoints", out_dir / "log.jsonl"

    model_config = getattr(lm, "config", None)
    pad_id = getattr(model_config, "pad_token_id", 1)
    max_positions = getattr(model_config, "max_positions", None)

    def as_source(samples: Sequence[Sample] | BatchSource) -> BatchSource:
        if hasattr(samples, "updates"):
            return samples  # type: ignore[return-value]
        return SampleBatches(
            samples,  # type: ignore[arg-type]
            config.max_tokens_per_batch,
            config.tokens_per_update,
            config.seed,
            target_only=config.loss == "target",
            pad_id=pad_id,
            max_positions=max_positions,
        )

    source = as_source(train_samples)
    valid = as_source(valid_samples) if valid_samples is not None else None

    # torch's AdamW is fairseq's Adam with weight decay: both decay decoupled from the
    # gradient (p -= lr * wd * p) and bias-correct the moments. fairseq decays every
    # parameter, biases and LayerNorms included, so nothing is excluded here either.
    # foreach=True: multi-tensor updates, also on CPU where torch's default is a loop.
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.warmup_init_lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
        foreach=True,
    )

    step, epoch, position = 0, 1, 0  # updates done; epoch in progress; its updates done
    last = ckpt_root / "last"
    if resume and last.exists():
        path = ckpt_root / last.read_text(encoding="utf-8").strip()
        state = restore(path, model, lm, optimizer, rank, prefix)
        step, epoch, position = state["step"], state["epoch"], state["position"]
        if state["epoch_done"]:
            epoch, position = epoch + 1, 0
        if main:
            truncate_log(log_path, step)
    else:
        # Ranks draw different dropout masks; rank 0's stream is a single process's.
        seed_everything(config.seed + rank)
        if main and log_path.exists():
            log_path.unlink()  # resume=True but no checkpoint yet: start from scratch

    epochs = config.max_epochs
    if config.max_updates > 0:
        total_updates = config.max_updates
    else:
        total_updates = sum(source.updates_in_epoch(e) for e in range(1, epochs + 1))

    result = TrainResult(steps=step, epochs=epoch - 1, log=log_path)
    notices: set[str] = set()
    bar = tqdm(total=total_updates, initial=step, disable=not (progress and main), unit="update")

    def write(record: dict[str, Any]) -> None:
        log.write(json.dumps(record) + "\n")

    def checkpoint(epoch_done: bool) -> None:
        # Collectives first, on every rank: each rank's RNG, and sharded weights/optimiser.
        rngs = [None] * ranks
        if ranks > 1:
            dist.all_gather_object(rngs, rng_state())
        weights, optim_state = None, None
        if is_sharded(model):
            weights, optim_state = gather_full_state(model, optimizer, prefix)
        if main:
            state = {
                "step": step,
                "epoch": epoch,
                "position": position,
                "epoch_done": epoch_done,
                "optimizer": optim_state if optim_state is not None else optimizer.state_dict(),
                "scheduler": {"schedule": config.schedule, "update": step},
                "rng": rng_state(),
                "config": asdict(config),
            }
            if ranks > 1:
                state["rng_ranks"] = rngs  # every rank resumes its own dropout stream
            name = f"epoch{epoch}" if epoch_done else f"update{step}"
            result.last_checkpoint = save_checkpoint(ckpt_root, name, lm, state, tokenizer, weights)
            prune(ckpt_root, config.keep_last, config.average_last)
        barrier()

    def validate() -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if valid is not None:
            result.valid_loss = evaluate_loss(model, valid, config.dtype)
            metrics["valid_loss"] = result.valid_loss
            metrics["valid_ppl"] = math.exp(min(result.valid_loss, 700.0))
        return metrics

    def out_of_updates() -> bool:
        return config.max_updates > 0 and step >= config.max_updates

    model.train()
    last_plot = time.monotonic()
    validated_at = -1  # the step of the last validation, so an epoch end does not repeat it
    log_file = log_path if main else os.devnull
    with open(log_file, "a", encoding="utf-8") as log, bar:
        while (epochs <= 0 or epoch <= epochs) and not out_of_updates():
            for batches in source.updates(epoch, position):
                lr = learning_rate(step, config, total_updates)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                began = time.perf_counter()
                loss, target_tokens, tokens = _accumulate(model, batches, config.dtype)
                record: dict[str, Any] = {}
                if config.clip_norm > 0:
                    norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
                    record["grad_norm"] = float(norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step, position = step + 1, position + 1
                speed = tokens / (time.perf_counter() - began)  # all ranks' tokens
                write(
                    {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "tokens": tokens,
                     "target_tokens": target_tokens, "tokens_per_s": speed, **record}
                )  # fmt: skip
                result.losses.append(loss)
                bar.update(1)
                if step % config.log_every == 0:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{speed:.0f}")
                    log.flush()
                if valid is not None and config.valid_every > 0 and step % config.valid_every == 0:
                    metrics, validated_at = validate(), step
                    write({"step": step, "epoch": epoch, **metrics})
                    bar.write(f"update {step}: valid_loss {metrics['valid_loss']:.4g}, "
                              f"valid_ppl {metrics['valid_ppl']:.4g}")  # fmt: skip
                    log.flush()
                if out_of_updates():
                    break
                if config.save_every_updates > 0 and step % config.save_every_updates == 0:
                    log.flush()
                    if position < source.updates_in_epoch(epoch):
                        checkpoint(epoch_done=False)
            if position < source.updates_in_epoch(epoch):
                checkpoint(epoch_done=False)  # stopped mid-epoch: keep the exact position
                break
            metrics = validate() if validated_at != step else {}
            if evaluate is not None:
                model.eval()
                metrics.update(evaluate(lm))
                model.train()
            if metrics:
                write({"step": step, "epoch": epoch, **metrics})
                bar.write(
                    f"epoch {epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                )
            log.flush()
            if config.save_every_epoch or epoch == epochs or out_of_updates():
                checkpoint(epoch_done=True)
            result.epochs = epoch
            if main and time.monotonic() - last_plot > PLOT_INTERVAL_S:
                plot_run(out_dir, notices)
                last_plot = time.monotonic()
            epoch, position = epoch + 1, 0

    result.steps = step
    if main and config.average_last > 0:
        epochs_saved = [p for _, done, p in list_checkpoints(ckpt_root) if done]
        chosen = epochs_saved[-config.average_last :]
        if len(chosen) < config.average_last:
            print(
                f"biogpt: averaging {len(chosen)} epoch checkpoints, fewer than asked",
                file=sys.stderr,
            )
        if chosen:
            result.averaged = average_checkpoints(chosen, out_dir / "averaged")
    if main:
        plot_run(out_dir, notices)
    barrier()
    return result
