"""Rules that reshape next-token scores (N, V) before a token is chosen: small pure functions
over the logits and the tokens of each row so far, as transformers' logits processors apply
them; `process_logits` and `sampling_filter` apply a `GenerationConfig`'s in transformers'
order."""

from __future__ import annotations

import torch
from torch import Tensor

from biogpt.decoding.config import GenerationConfig


def penalize_repetitions(logits: Tensor, tokens: Tensor, real: Tensor, penalty: float) -> Tensor:
    """Make every token already in the row less likely: divide a positive logit by `penalty`,
    multiply a negative one (CTRL's rule, as transformers applies it). Padding does not count."""
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen.scatter_(1, tokens.masked_fill(~real, 0), real)  # (N, V): True for tokens in the row
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def block_repeated_ngrams(logits: Tensor, tokens: Tensor, real: Tensor, n: int) -> Tensor:
    """Forbid every token that would complete an n-gram already in the row.

    A window of n tokens whose first n-1 equal the row's last n-1 tokens bans its last token.
    Windows that touch padding are ignored, so padding never bans anything.
    """
    length = tokens.shape[1]
    if length < n:
        return logits
    windows = tokens.unfold(1, n, 1)  # (N, W, n)
    valid = real.unfold(1, n, 1).all(dim=-1)  # (N, W)
    suffix = tokens[:, length - n + 1 :]  # (N, n-1)
    hit = (windows[..., :-1] == suffix[:, None, :]).all(dim=-1) & valid
    vocab = logits.shape[1]
    banned = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    banned.scatter_(1, torch.where(hit, windows[..., -1], vocab), True)  # misses go to column V
    return logits.masked_fill(banned[:, :vocab], float("-inf"))


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties at the k-th value are kept too)."""
    k = min(k, logits.shape[-1])
    threshold = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (nucleus).

    Sorted ascending, a token goes when the probability mass up to and including it is at
    most 1 - p; the most likely token always stays.
    """
    ordered, order = torch.sort(logits, dim=-1)
    drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= 1 - p
    drop[:, -1] = False
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


# --- A config's rules, in transformers' order ------------------------------------------------


def process_logits(
    logits: Tensor, tokens: Tensor, real: Tensor, new_tokens: int, config: GenerationConfig
) -> Tensor:
    """Apply every rule of `config` to next-token scores (N, V): repetition penalty, n-gram
    blocking, minimum length. `tokens` and `real` (N, L) are each row so far and its real
    tokens; `new_tokens` is how many tokens were made so far."""
    if config.repetition_penalty != 1.0:
        logits = penalize_repetitions(logits, tokens, real, config.repetition_penalty)
    if config.no_repeat_ngram_size:
        logits = block_repeated_ngrams(logits, tokens, real, config.no_repeat_ngram_size)
    if new_tokens < config.min_new_tokens:
        logits = logits.clone()
        logits[:, config.eos_token_id] = float("-inf")
    return logits


def sampling_filter(logits: Tensor, config: GenerationConfig) -> Tensor:
    """When sampling: temperature, then top-k, then top-p, on scores (N, V)."""
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p < 1.0:
        logits = top_p_filter(logits, config.top_p)
    return logits
