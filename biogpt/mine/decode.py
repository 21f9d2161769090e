"""Greedy answers for a stream of prompts with continuous batching: rows join the step API's
batch (`biogpt.decoding.steps.DecodingBatch`) as others finish, so it stays full.

Each prompt joins alone and unpadded, as the server's scheduler runs a request
(`biogpt.serve.scheduler`), and its next token is the argmax of its own logits: the tokens
are those `generate` picks for the prompt alone, which is what `biogpt predict` picks in
its padded batches (`biogpt.tasks.evaluation.predict`). This holds bit for bit while the
batch holds at most 8 rows (the fused step computes each row as it would alone); a batch
made for more rows takes the op-by-op step, whose matmuls may round a row differently.

With `prompt_lookup` k > 0, every row drafts up to k tokens a pass from its own prompt and
answer (`biogpt.decoding.speculative.NgramIndex`: a task's answer copies names from the
abstract and repeats its template), and one pass of the fused step verifies the drafts of
all the rows together, each draft token a row of the step at its own slot, so that its
logits are those of its own one-token step bit for bit: the tokens and log-probabilities
are plain greedy decoding's. Each row keeps the longest prefix of its draft that matches
its own choices, plus its next choice, and gives back the rest (`DecodingBatch.rollback`
with a count per row). A pass feeds every row the same number of tokens, the longest
draft's (shorter drafts are filled with tokens that are then given back), and the fused
step takes at most 64 rows x tokens (fp32 weights; 8 otherwise), so a full batch of 8
drafts up to 7 tokens a row. How many tokens a pass feeds is decided from what the rows
have accepted so far and what passes of each size have cost (`Drafts`, `PassCost`). `benchmarks/mine.py` measures it.

Shapes: N live rows, T tokens fed per row in a pass, V vocabulary.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from biogpt.decoding.output import non_finite
from biogpt.decoding.speculative import NgramIndex
from biogpt.decoding.steps import DecodingBatch
from biogpt.errors import BioGPTError
from biogpt.model import BioGPT

PLAIN_EVERY = 16  # at least one pass in this many is a plain step (for the thread count)


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
    history: NgramIndex | None = None  # prompt and answer, where drafts come from
    rate: float = 0.0  # its draft tokens' acceptance so far (a running average)

    @property
    def done(self) -> bool:
        return self.ended or len(self.tokens) >= self.budget


@dataclass
class Speculation:
    """What drafting did: passes over the weights that verified drafts, the draft tokens
    fed and those accepted. Each such pass gives every row its accepted tokens plus one."""

    passes: int = 0
    drafted: int = 0
    accepted: int = 0
    tokens: int = 0  # tokens the rows took in those passes

    @property
    def tokens_per_row_pass(self) -> float:
        """Tokens a row took per pass of its own, in the passes that verified drafts."""
        rows = self.tokens - self.accepted
        return self.tokens / rows if rows else 1.0


class PassCost:
    """What a pass of m rows x tokens costs, as a line t(m) = fixed + m * per_row fitted to
    the passes timed so far (the recent ones weigh more). Its slope is where the machine and
    the model show: on a model whose plain step is bound by memory (the weights stream once
    for any number of rows) a pass of more rows costs little more, while on a small model
    whose step is bound by compute it costs nearly in proportion. Until passes of two sizes
    have been timed, a pass's fixed part is taken as worth `PRIOR_ROWS` rows."""

    FORGET = 0.97  # each pass timed weighs this much less than the one after it
    PRIOR_ROWS = 8.0

    def __init__(self) -> None:
        self.sums = [0.0] * 5  # weighted sums of 1, m, m^2, t, m t

    def record(self, rows: int, seconds: float) -> None:
        for i, term in enumerate((1.0, rows, rows * rows, seconds, rows * seconds)):
            self.sums[i] = self.sums[i] * self.FORGET + term

    def __call__(self, rows: int) -> float:
        """The expected seconds of a pass of `rows` rows x tokens (in units of a plain step
        of `rows` rows before any pass was timed)."""
        weight, m, mm, t, mt = self.sums
        if weight == 0.0:
            return (rows + self.PRIOR_ROWS) / (1 + self.PRIOR_ROWS)
        spread = mm / weight - (m / weight) ** 2  # the variance of the sizes timed
        if spread < 0.5:  # one size so far: the prior's shape through its time
            return (t / weight) * (rows + self.PRIOR_ROWS) / (m / weight + self.PRIOR_ROWS)
        per_row = max((mt / weight - (m / weight) * (t / weight)) / spread, 1e-9)
        fixed = max(t / weight - per_row * m / weight, 0.0)
        return fixed + per_row * rows


class Drafts:
    """How many tokens a pass feeds each row. Every row is fed as many tokens as the longest
    draft, and a pass costs more as it feeds more rows x tokens (`PassCost`, measured), so
    a wider pass must be expected to yield that much more. A row's draft token at place l
    is kept with a chance taken as its acceptance rate so far to the power l; the width
    chosen gives the most expected tokens a second. A new row starts from the rate of the
    rows before it, so that a model whose answers copy nothing soon stops drafting (a pass
    then costs one step, plus the look-ups) and one that copies drafts at once."""

    START = 0.75  # the first rows' rate: hopeful, so that they try
    PACE = 0.25  # a rate moves this share of the way to each pass's accepted share

    def __init__(self) -> None:
        self.rate = self.START  # acceptance over all rows so far, a new row's start
        self.cost = PassCost()

    def width(self, rows: list[Row], drafts: list[list[int]]) -> int:
        """The number of tokens each row is fed (1: a plain step), for `drafts`, each the
        longest draft its row can make."""
        n = len(rows)
        best, best_value, gain = 1, n / self.cost(n), 0.0
        for t in range(2, 2 + max(map(len, drafts), default=0)):
            gain += sum(
                r.rate ** (t - 1) for r, d in zip(rows, drafts, strict=True) if len(d) >= t - 1
            )
            value = (n + gain) / self.cost(n * t)
            if value > best_value:
                best, best_value = t, value
        return best

    def update(self, row: Row, drafted: int, accepted: int) -> None:
        if drafted:
            share = accepted / drafted
            row.rate += self.PACE * (share - row.rate)
            self.rate += self.PACE * (share - self.rate)


@torch.inference_mode()
def greedy_rows(
    model: BioGPT,
    rows: Iterable[Row],
    batch_size: int,
    eos_id: int,
    prompt_lookup: int = 0,
    speculation: Speculation | None = None,
) -> Iterator[list[Row]]:
    """Decode `rows` greedily, `batch_size` at a time, taking the next row as soon as one
    finishes; yields the rows that finish at each pass (in the order they joined). With
    `prompt_lookup` > 0 rows draft up to that many tokens a pass where the step verifies
    them exactly (module docstring); `speculation` gets the counts."""
    if batch_size < 1:
        raise BioGPTError(f"batch_size must be positive, got {batch_size}")
    pending = iter(rows)
    live: list[Row] = []  # in cache order
    exhausted = False
    drafts = Drafts()
    passes = 0
    with DecodingBatch(model, expected_rows=batch_size) as batch:
        drafting = prompt_lookup > 0 and batch.fused is not None and batch.extends_exactly
        while True:
            joined: list[Row] = []
            while not exhausted and len(live) + len(joined) < batch_size:
                row = next(pending, None)
                if row is None:
                    exhausted = True
                    break
                ids = torch.tensor([row.prompt], dtype=torch.long, device=model.device)
                logits = batch.add(ids, torch.ones_like(ids, dtype=torch.bool), row.budget)
                if drafting:
                    row.history, row.rate = NgramIndex(row.prompt), drafts.rate
                _choose([row], logits[:, None], [[]], eos_id)
                joined.append(row)
            live += joined
            if finished := [row for row in joined if row.done]:
                yield finished
            if not live:
                return
            if any(row.done for row in live):
                _leave(batch, live, [0] * len(live))
                live = [row for row in live if not row.done]
                if not live:
                    continue
            room = batch.fused.max_rows // len(live) if drafting and batch.fused else 1
            if batch.probing or passes % PLAIN_EVERY == PLAIN_EVERY - 1:
                room = 1  # a step, which the thread count is measured on (`DecodingBatch`)
            passes += 1
            width = 1
            fed: list[list[int]] = [[] for _ in live]
            if room > 1:  # every row's tokens of a pass, fillers too, within the positions
                room = min(room, *(model.config.max_positions - _fed(row) for row in live))
                fed = [_draft(row, min(prompt_lookup, room - 1)) for row in live]
                width = drafts.width(live, fed)
                fed = [d[: width - 1] for d in fed]
            last = [row.tokens[-1] for row in live]
            began = time.perf_counter()
            if width == 1:
                logits = batch.step(torch.tensor(last, device=model.device))[:, None]
            else:  # shorter drafts filled up with their row's last token, given back after
                feed = [
                    [t, *d] + [t] * (width - 1 - len(d)) for t, d in zip(last, fed, strict=True)
                ]
                logits = batch.extend(torch.tensor(feed, device=model.device))  # (N, T, V)
            if drafting:  # the costs of steps and wider passes alike: what widths weigh
                drafts.cost.record(len(live) * width, time.perf_counter() - began)
            kept = _choose(live, logits, fed, eos_id)
            if width > 1:
                for row, d, n in zip(live, fed, kept, strict=True):
                    drafts.update(row, len(d), n - 1)
                if speculation is not None:
                    speculation.passes += 1
                    speculation.drafted += sum(map(len, fed))
                    speculation.accepted += sum(n - 1 for n in kept)
                    speculation.tokens += sum(kept)
            if finished := [row for row in live if row.done]:
                yield finished
            _leave(batch, live, [width - n for n in kept])
            live = [row for row in live if not row.done]


def _fed(row: Row) -> int:
    """The tokens `row` has fed so far: its prompt and its answer but the last token."""
    return len(row.prompt) + len(row.tokens) - 1


def _draft(row: Row, most: int) -> list[int]:
    """`row`'s draft for the next pass: at most `most` tokens, and never past its budget
    (plain decoding never feeds its last token)."""
    assert row.history is not None
    return row.history.draft(min(most, row.budget - len(row.tokens) - 1))


def _choose(rows: list[Row], logits: Tensor, fed: list[list[int]], eos_id: int) -> list[int]:
    """Choose each row's tokens from a pass's logits (N, T, V), position j of row i being
    after its j-th token fed, while its draft `fed[i]` (the tokens after the first) matches
    the choices; returns how many positions each row used (its accepted draft tokens plus
    one). A row's log-probabilities do not depend on the other rows beside it in a call."""
    chosen = logits.argmax(dim=-1).tolist()  # (N, T)
    used = []
    for row, choices, draft in zip(rows, chosen, fed, strict=True):
        n = 1
        while n <= len(draft) and choices[n - 1] == draft[n - 1] != eos_id:
            if len(row.tokens) + n >= row.budget:
                break
            n += 1
        used.append(n)
    # (rows, logits (M, V), tokens (M,)) per call: a plain step's rows in one call; else
    # each row's positions used, a view each (no copy of the pass's logits)
    if max(used) == 1:
        calls = [(rows, logits[:, 0], [c[0] for c in chosen])]
    else:
        calls = [
            ([row], logits[i, :n], chosen[i][:n])
            for i, (row, n) in enumerate(zip(rows, used, strict=True))
        ]
    logprobs: list[float] = []
    for owners, part, tokens in calls:
        if (bad := non_finite(part)) is not None:
            raise BioGPTError(
                f"the model's logits hold {bad[1]} for document "
                f"{owners[bad[0] if len(owners) > 1 else 0].key}; "
                "its weights or dtype may be at fault"
            )
        picked = part.log_softmax(dim=-1).gather(1, torch.tensor(tokens)[:, None])
        logprobs += picked[:, 0].tolist()
    taken = iter(logprobs)
    for row, choices, n in zip(rows, chosen, used, strict=True):
        for token in choices[:n]:
            row.logprob += next(taken)
            if token == eos_id:
                row.ended = True
                continue  # `</s>` is the last of the row's positions used
            row.tokens.append(token)
            if row.history is not None:
                row.history.append(token)
    return used


def _leave(batch: DecodingBatch, live: list[Row], give_back: list[int]) -> None:
    """Drop the finished rows from the batch; the others give back `give_back[i]` tokens."""
    keep = [i for i, row in enumerate(live) if not row.done]
    if len(keep) < len(live):
        batch.keep(torch.tensor(keep, dtype=torch.long))
    counts = [give_back[i] for i in keep]
    if any(counts):
        batch.rollback(torch.tensor(counts, dtype=torch.long))
