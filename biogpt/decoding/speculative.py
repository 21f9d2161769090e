"""Prompt-lookup speculative decoding: exactly the greedy tokens, several per pass.

At batch 1 a decoding step is the weights streaming from memory, and feeding a few more
tokens in the same pass costs little more (`DecodingBatch.extend`: the gemv kernel takes
several rows of x in one pass over the weights, and so does the fused step). A task's
greedy answer copies names from its source text and repeats its template ("the relation
between X and Y exists; ..."), so
the next tokens can often be guessed for free: find the last few tokens generated (an
n-gram) earlier in the row (prompt and answer so far), and take what followed them there
as a draft. One pass feeds the last chosen token and the draft, k + 1 tokens; the model's
own greedy choice after each is compared with the draft's next token, and the longest
prefix that matches is kept, plus the model's choice after it (so a pass never yields
less than plain decoding's one token). The slots of the rejected draft tokens are taken
back (`DecodingBatch.rollback`) and overwritten by the next pass.

Exactness. The tokens are plain greedy decoding's only if every token's logits in the
several-token pass are bit for bit those one-token steps give: a near-tie between the top
two tokens can go either way by a rounding. `DecodingBatch.extends_exactly` says where that
holds. On the fused C step (`biogpt.cpu.fused`, on CPUs with the gemv kernel) the pass's
tokens are rows of one step, each at its own slot of the row's cache, so each is
computed as its own step computes it (`FusedStep.extend`); on the op-by-op step over layers
that compute each row as alone, `steps.decode_tokens` keeps each token's arithmetic that of
its own step. Here `generate` speculates for one prompt; a batch of more than one row
decodes one token a step whatever `prompt_lookup` says. Mining verifies the drafts of a
whole batch in one pass, each row keeping its own number of tokens (`biogpt.mine.decode`).
`benchmarks/speculative.py` measures the speed and the accepted tokens per pass.

Shapes: V vocabulary, k draft tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from biogpt.decoding.config import GenerationConfig
from biogpt.decoding.logits import process_logits
from biogpt.decoding.output import (
    GenerationOutput,
    NonFiniteLogits,
    StopCriterion,
    TokenCallback,
    non_finite,
)
from biogpt.decoding.steps import DecodingBatch

MAX_NGRAM = 3  # the longest run of last tokens looked up; shorter ones are tried after it


@dataclass
class SpeculativeOutput(GenerationOutput):
    """A `GenerationOutput` with the speculation's counts: `passes` forward passes after
    the prompt's, which `drafted` draft tokens went into and `accepted` of them were kept.
    Each pass yields its accepted draft tokens plus one of the model's own."""

    passes: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def tokens_per_pass(self) -> float:
        """New tokens per pass after the prompt's, which chose the first (1.0: no draft
        token was accepted)."""
        return (self.scores.shape[1] - 1) / self.passes if self.passes else 1.0


class NgramIndex:
    """Where each run of 1 to `MAX_NGRAM` tokens last occurred in a growing row of tokens,
    by the position of the token that followed it: a draft is read from there."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens: list[int] = []
        self.follows: dict[tuple[int, ...], int] = {}
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        """The row's next token: the runs that end just before it are followed by it."""
        end = len(self.tokens)
        for n in range(1, min(MAX_NGRAM, end) + 1):
            self.follows[tuple(self.tokens[end - n : end])] = end  # later occurrences win
        self.tokens.append(token)

    def draft(self, length: int) -> list[int]:
        """`length` tokens that followed the latest earlier occurrence of the row's last n
        tokens, the longest n that occurred before (none if none did). A copy that reaches
        the row's end goes on with its own first tokens, as a repetition would (LZ77's
        overlapping copy): after "a b a b" the draft for "a b" is "a b a b ...", not "a b"."""
        end = len(self.tokens)
        for n in range(min(MAX_NGRAM, end), 0, -1):
            start = self.follows.get(tuple(self.tokens[end - n : end]))
            if start is not None:
                out = self.tokens[start : start + length]
                while len(out) < length:
                    out.append(out[len(out) - (end - start)])
                return out
        return []


def speculates(batch: DecodingBatch, rows: int, config: GenerationConfig) -> bool:
    """Whether greedy decoding of `rows` rows on `batch` takes prompt-lookup speculation:
    asked for, greedy, one row, and exact there (see the module docstring)."""
    greedy = not config.do_sample and config.num_beams == 1
    return config.prompt_lookup > 0 and greedy and rows == 1 and batch.extends_exactly


def prompt_lookup_greedy(
    batch: DecodingBatch,
    input_ids: Tensor,
    real: Tensor,
    config: GenerationConfig,
    stop: StopCriterion | None = None,
    on_token: TokenCallback | None = None,
) -> SpeculativeOutput:
    """Greedy decoding of one prompt `input_ids` (1, T), `real` (1, T) marking its real
    tokens, on the empty `batch`, drafting up to `config.prompt_lookup` tokens a pass. The
    tokens and scores are greedy decoding's on that batch's step (module docstring); the
    logits processors of `config` see each position's own history, as they do a step at a
    time. Logits that hold NaN or inf raise `NonFiniteLogits` naming the step."""
    _, prompt_len = input_ids.shape
    total = prompt_len + config.max_new_tokens
    device = input_ids.device
    tokens = torch.full((1, total), config.pad_token_id, dtype=torch.long, device=device)
    tokens[:, :prompt_len] = input_ids
    token_is_real = torch.zeros(1, total, dtype=torch.bool, device=device)
    token_is_real[:, :prompt_len] = real
    logprobs = torch.zeros(1, config.max_new_tokens, dtype=torch.float32, device=device)
    history = NgramIndex(input_ids[0][real[0]].tolist())
    logits = batch.add(input_ids, real, budget=config.max_new_tokens)[:, None]  # (1, 1, V)
    fed: list[int] = []  # the pass's draft tokens, after the token it continued from
    steps = passes = drafted = accepted = 0
    while True:
        done = False
        for j in range(logits.shape[1]):  # position j: after the pass's j-th token
            cur = prompt_len + steps
            if (bad := non_finite(logits[:, j])) is not None:
                raise NonFiniteLogits(bad[1], f"step {steps + 1}", 0)
            scores = process_logits(
                logits[:, j], tokens[:, :cur], token_is_real[:, :cur], steps, config
            )
            chosen = scores.argmax(dim=-1)  # (1,)
            logprobs[:, steps] = scores.log_softmax(dim=-1).gather(1, chosen[:, None])[:, 0]
            tokens[:, cur] = chosen
            token_is_real[:, cur] = True
            steps += 1
            token = int(chosen[0])
            history.append(token)
            if on_token is not None:
                on_token(token)
            matched = j < len(fed) and token == fed[j]  # the draft's next token is right
            accepted += matched
            done = token == config.eos_token_id or steps == config.max_new_tokens
            if stop is not None:
                done |= bool(stop(tokens[:, : cur + 1])[0])
            if done or not matched:
                break  # past a wrong draft token, the pass's logits are not the row's
        if done:
            break
        batch.rollback(len(fed) - j)
        # The cache holds up to T + max_new_tokens - 1 slots: a pass must leave a token
        # unfed, as plain decoding never feeds its last one.
        fed = history.draft(min(config.prompt_lookup, config.max_new_tokens - steps - 1))
        logits = batch.extend(torch.tensor([[token, *fed]], device=device))  # (1, k + 1, V)
        passes += 1
        drafted += len(fed)
    return SpeculativeOutput(
        tokens[:, : prompt_len + steps],
        logprobs[:, :steps],
        prompt_len,
        passes=passes,
        drafted=drafted,
        accepted=accepted,
    )
