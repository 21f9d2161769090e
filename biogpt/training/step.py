"""One optimiser update's gradient, and the validation loss.

What the loop runs for every update: backpropagate the update's micro-batches with the loss
normalised so that the accumulated gradient is that of one big batch, however the update was
split between micro-batches and ranks (derived at `accumulate`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from biogpt.training.batching import Batch, BatchSource
from biogpt.training.loss import batch_loss
from biogpt.training.state import all_reduce_sum, world

__all__ = ["accumulate", "accumulate_gradients", "evaluate_loss"]

# --- Distributed: gradient sync (all no-ops in a single process) ------------------------


@contextmanager
def _gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-batches: only the update's last
    backward needs to synchronise (DDP/FSDP1 `no_sync`, FSDP2 `set_requires_gradient_sync`)."""
    no_sync = getattr(model, "no_sync", None)
    set_sync = getattr(model, "set_requires_gradient_sync", None)
    if sync:
        yield
    elif callable(no_sync):
        with no_sync():
            yield
    elif callable(set_sync):
        set_sync(False)
        try:
            yield
        finally:
            set_sync(True)
    else:
        yield


def accumulate(model: nn.Module, batches: Sequence[Batch], dtype: str) -> tuple[float, int, int]:
    """Backpropagate one update's micro-batches: (mean loss, target tokens, tokens), global.

    Loss normalisation: with W ranks each holding some of the update's batches, the loss of
    one big batch is sum_r L_r / N, N the trained tokens over *all* ranks (one all-reduce of
    the counts before the backward). Each rank backpropagates W * L_r / N; DDP and FSDP
    average gradients over ranks (divide by W), which leaves exactly grad(sum_r L_r / N):
    the single-process gradient, however the batch was split between ranks and micro-batches.
    """
    device = next(model.parameters()).device
    _, ranks = world()
    counts = [float(sum(b.target_tokens for b in batches)), float(sum(b.tokens for b in batches))]
    target_tokens, tokens = all_reduce_sum(counts, device)  # N, and the tokens for the log
    scale = ranks / max(1.0, target_tokens)
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        with _gradient_sync(model, sync=i == len(batches) - 1):
            with _autocast(device, dtype):
                loss = batch_loss(model, batch.input_ids.to(device), batch.labels.to(device))
            (loss * scale).backward()  # outside autocast, as torch advises
        loss_sum += loss.detach()
    if ranks > 1:
        dist.all_reduce(loss_sum)  # for the log only: the global mean loss
    return float(loss_sum) / max(1.0, target_tokens), int(target_tokens), int(tokens)  # one sync


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
    loss, target_tokens, _ = accumulate(model, batches, dtype)
    return loss, target_tokens


def _autocast(device: torch.device, dtype: str) -> AbstractContextManager[Any]:
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
    loss_sum, target_tokens = 0.0, 0.0
    for update in source.updates(1):
        for batch in update:
            with _autocast(device, dtype):
                loss = batch_loss(model, batch.input_ids.to(device), batch.labels.to(device))
            loss_sum += float(loss)
            target_tokens += batch.target_tokens
    model.train(was_training)
    loss_sum, target_tokens = all_reduce_sum([loss_sum, target_tokens], device)
    return loss_sum / max(1.0, target_tokens)
