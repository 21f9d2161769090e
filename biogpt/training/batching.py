"""Training data: samples -> length-bucketed micro-batches -> optimiser updates.

A sample is `(input_ids, loss_mask)`: token ids and, optionally, a 0/1 mask marking the
positions the loss should train (a task's target); `None` trains the whole sequence, which is
what the paper does for every task. The trainer only sees a `BatchSource`, which yields one
list of micro-batches per optimiser update, so a streaming pretraining source can replace
`SampleBatches` without the loop changing.

Everything here is deterministic given (seed, epoch): the plan of an epoch can be rebuilt
after a restart and resumed at any update index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from biogpt.config import ModelConfig
from biogpt.errors import BioGPTError
from biogpt.labels import IGNORE_INDEX, next_token_targets

Sample = tuple[list[int], list[int] | None]  # (input_ids, loss_mask or None = every position)


@dataclass
class Batch:
    """One micro-batch, right-padded.

    `labels` are *unshifted* (aligned with `input_ids`): position t holds the token to be
    predicted from positions < t, or IGNORE_INDEX where nothing is trained (padding,
    non-target tokens); the loss shifts them (`biogpt.labels.next_token_targets`).
    `target_tokens` counts the trained predictions, the loss denominator's share.
    """

    input_ids: Tensor  # (B, T) long, padded with the pad id
    attention_mask: Tensor  # (B, T) long, 1 on real tokens
    labels: Tensor  # (B, T) long, IGNORE_INDEX where not trained
    tokens: int  # real (non-padding) tokens
    target_tokens: int  # positions 1.. with a label: what the loss is averaged over


class BatchSource(Protocol):
    """What the training loop reads: the updates of an epoch, resumable at any index."""

    def updates_in_epoch(self, epoch: int) -> int:
        """Number of optimiser updates in `epoch` (1-based)."""
        ...

    def updates(self, epoch: int, start: int = 0) -> Iterator[list[Batch]]:
        """The micro-batches of each update of `epoch`, beginning at update index `start`."""
        ...


def make_labels(input_ids: list[int], loss_mask: list[int] | None, target_only: bool) -> list[int]:
    """Labels for one sample: the ids themselves, or IGNORE_INDEX where the mask says not to
    train.

    `target_only=False` is the paper's loss (the whole sequence: source, prompt and target);
    `target_only=True` trains only the positions with loss_mask 1.
    """
    if not target_only or loss_mask is None:
        return list(input_ids)
    if len(loss_mask) != len(input_ids):
        raise BioGPTError(
            f"loss mask has {len(loss_mask)} entries but the sample has {len(input_ids)} tokens"
        )
    return [t if m else IGNORE_INDEX for t, m in zip(input_ids, loss_mask, strict=True)]


def collate(
    samples: Sequence[Sample], target_only: bool, pad_id: int = ModelConfig.pad_token_id
) -> Batch:
    """Right-pad `samples` into one batch.

    Right padding keeps every real token at the same place as unpadded, so under a causal
    mask real tokens never see padding: the loop can run the fast mask-free attention path
    and still get exactly the unpadded result (padding positions are never trained).
    """
    width = max(len(ids) for ids, _ in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, (ids, loss_mask) in enumerate(samples):
        length = len(ids)
        input_ids[row, :length] = torch.tensor(ids, dtype=torch.long)
        labels[row, :length] = torch.tensor(make_labels(ids, loss_mask, target_only))
        attention_mask[row, :length] = 1
    labels[labels == pad_id] = IGNORE_INDEX  # the model's loss skips the pad id too
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        tokens=int(attention_mask.sum()),
        target_tokens=int((next_token_targets(labels) != IGNORE_INDEX).sum()),
    )


def plan_batches(lengths: Sequence[int], max_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Sample indices of each micro-batch of an epoch: shuffled, bucketed by length.

    As fairseq does: shuffle (seeded by seed and epoch), stable-sort by length so equal
    lengths stay shuffled, fill batches while rows x padded length <= `max_tokens`, then
    shuffle the batch order so an epoch does not run from short to long.
    """
    rng = np.random.default_rng([seed, epoch])
    sizes = np.asarray(lengths, dtype=np.int64)
    order = rng.permutation(len(sizes))
    order = order[np.argsort(sizes[order], kind="stable")]
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for index in order.tolist():
        length = int(sizes[index])
        if length > max_tokens:
            raise BioGPTError(
                f"--max-tokens-per-batch {max_tokens}: sample {index} has {length} tokens, "
                "more than max_tokens_per_batch allows"
            )
        if current and max(width, length) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, width = [], 0
        current.append(index)
        width = max(width, length)
    if current:
        batches.append(current)
    return [batches[i] for i in rng.permutation(len(batches)).tolist()]


def group_updates(batch_tokens: Sequence[int], tokens_per_update: int) -> list[range]:
    """Split consecutive micro-batches into updates of at least `tokens_per_update` tokens.

    Gradient accumulation: an update closes once its batches hold that many real tokens
    (the epoch's last update may hold fewer). 0 means one micro-batch per update.
    """
    updates: list[range] = []
    start, total = 0, 0
    for i, tokens in enumerate(batch_tokens):
        total += tokens
        if total >= tokens_per_update:
            updates.append(range(start, i + 1))
            start, total = i + 1, 0
    if start < len(batch_tokens):
        updates.append(range(start, len(batch_tokens)))
    return updates


class SampleBatches:
    """A `BatchSource` over in-memory samples (fine-tuning): length buckets, seeded shuffle."""

    def __init__(
        self,
        samples: Sequence[Sample],
        max_tokens_per_batch: int,
        tokens_per_update: int,
        seed: int,
        target_only: bool = False,
        pad_id: int = ModelConfig.pad_token_id,
        max_positions: int | None = None,
    ) -> None:
        self.samples = [(list(ids), None if m is None else list(m)) for ids, m in samples]
        if not self.samples:
            raise BioGPTError("no training samples")
        for i, (ids, _) in enumerate(self.samples):
            if len(ids) < 2:
                raise BioGPTError(f"sample {i} has {len(ids)} tokens; at least 2 are needed")
            if max_positions is not None and len(ids) > max_positions:
                raise BioGPTError(
                    f"sample {i} has {len(ids)} tokens but the model has {max_positions} positions"
                )
        self.lengths = [len(ids) for ids, _ in self.samples]
        longest = max(range(len(self.lengths)), key=self.lengths.__getitem__)
        if self.lengths[longest] > max_tokens_per_batch:  # said now, before any training
            raise BioGPTError(
                f"--max-tokens-per-batch {max_tokens_per_batch}: sample {longest} has "
                f"{self.lengths[longest]} tokens, more than max_tokens_per_batch allows"
            )
        self.max_tokens = max_tokens_per_batch
        self.tokens_per_update = tokens_per_update
        self.seed = seed
        self.target_only = target_only
        self.pad_id = pad_id
        self._plans: dict[int, tuple[list[list[int]], list[range]]] = {}

    def _plan(self, epoch: int) -> tuple[list[list[int]], list[range]]:
        if epoch not in self._plans:
            self._plans.clear()  # one epoch at a time is all the loop needs
            batches = plan_batches(self.lengths, self.max_tokens, self.seed, epoch)
            tokens = [sum(self.lengths[i] for i in b) for b in batches]
            self._plans[epoch] = (batches, group_updates(tokens, self.tokens_per_update))
        return self._plans[epoch]

    def updates_in_epoch(self, epoch: int) -> int:
        return len(self._plan(epoch)[1])

    def updates(self, epoch: int, start: int = 0) -> Iterator[list[Batch]]:
        batches, updates = self._plan(epoch)
        for update in updates[start:]:
            yield [
                collate([self.samples[i] for i in batches[b]], self.target_only, self.pad_id)
                for b in update
            ]
