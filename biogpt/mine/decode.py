"""Greedy answers for a stream of prompts with continuous batching: rows join the step API's
batch (`biogpt.decoding.steps.DecodingBatch`) as others finish, so it stays full.

Each prompt joins alone and unpadded, as the server's scheduler runs a request
(`biogpt.serve.scheduler`), and its next token is the argmax of its own logits: the tokens
are those `generate` picks for the prompt alone, which is what `biogpt predict` picks in
its padded batches (`biogpt.tasks.evaluation.predict`). This holds bit for bit while the
batch holds at most 8 rows (the fused step computes each row as it would alone); a batch
made for more rows takes the op-by-op step, whose matmuls may round a row differently.

Shapes: N live rows, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from biogpt.decoding.output import non_finite
from biogpt.decoding.steps import DecodingBatch
from biogpt.errors import BioGPTError
from biogpt.model import BioGPT


@dataclass
class Row:
    """One prompt to answer: `key` is the caller's, `budget` the most new tokens it may
    take (`</s>` counted). Decoding fills `tokens` (the answer, without `</s>`) and
    `logprob` (the sum of the chosen tokens' log-probabilities, `</s>` included: the
    sequence log-probability of the answer as the model ends it)."""

    key: Any
    prompt: list[int]
    budget: int
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0
    ended: bool = False  # `</s>` came before the budget ran out


@torch.inference_mode()
def greedy_rows(
    model: BioGPT, rows: Iterable[Row], batch_size: int, eos_id: int
) -> Iterator[list[Row]]:
    """Decode `rows` greedily, `batch_size` at a time, taking the next row as soon as one
    finishes; yields the rows that finish at each step (in the order they joined)."""
    if batch_size < 1:
        raise BioGPTError(f"batch_size must be positive, got {batch_size}")
    pending = iter(rows)
    live: list[Row] = []
    logits: torch.Tensor | None = None  # (N, V) of the live rows, in cache order
    exhausted = False
    with DecodingBatch(model, expected_rows=batch_size) as batch:
        while True:
            joined = []
            while not exhausted and len(live) < batch_size:
                row = next(pending, None)
                if row is None:
                    exhausted = True
                    break
                ids = torch.tensor([row.prompt], dtype=torch.long, device=model.device)
                joined.append(batch.add(ids, torch.ones_like(ids, dtype=torch.bool), row.budget))
                live.append(row)
            if joined:
                logits = torch.cat(joined if logits is None else [logits, *joined])
            if not live or logits is None:
                return
            if (bad := non_finite(logits)) is not None:
                raise BioGPTError(
                    f"the model's logits hold {bad[1]} for document {live[bad[0]].key}; "
                    "its weights or dtype may be at fault"
                )
            chosen = logits.argmax(dim=-1)  # (N,)
            picked = logits.log_softmax(dim=-1).gather(1, chosen[:, None])[:, 0]  # (N,)
            keep, finished = [], []
            for i, (row, token, logprob) in enumerate(
                zip(live, chosen.tolist(), picked.tolist(), strict=True)
            ):
                row.logprob += logprob
                if token == eos_id:
                    row.ended = True
                else:
                    row.tokens.append(token)
                if row.ended or len(row.tokens) >= row.budget:
                    finished.append(row)
                else:
                    keep.append(i)
            if finished:
                yield finished
            if len(keep) < len(live):
                index = torch.tensor(keep, dtype=torch.long)
                batch.keep(index)
                live = [live[i] for i in keep]
                chosen = chosen[index.to(chosen.device)]
            logits = batch.step(chosen) if live else None
