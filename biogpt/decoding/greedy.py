"""Greedy decoding and sampling on a `DecodingBatch`: every row takes its best (or a drawn)
token each step, and a row that ends leaves the batch, so it stops costing work. Greedy
decoding of one prompt with `prompt_lookup` takes several tokens a pass where that is exact
(`speculative`).

Shapes: N rows, L prompt + new tokens, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from biogpt.decoding.config import GenerationConfig
from biogpt.decoding.logits import process_logits, sampling_filter
from biogpt.decoding.output import (
    GenerationOutput,
    NonFiniteLogits,
    StopCriterion,
    TokenCallback,
    non_finite,
)
from biogpt.decoding.speculative import prompt_lookup_greedy, speculates
from biogpt.decoding.steps import DecodingBatch
from biogpt.model import BioGPT


def greedy_or_sample(
    model: BioGPT,
    input_ids: Tensor,
    real: Tensor,
    config: GenerationConfig,
    stop: StopCriterion | None,
    on_token: TokenCallback | None,
) -> GenerationOutput:
    """Decode the prompts `input_ids` (N, T) whose real tokens `real` (N, T) marks.
    Logits that hold NaN or inf raise `NonFiniteLogits` naming the step and the row."""
    n, prompt_len = input_ids.shape
    total = prompt_len + config.max_new_tokens
    device = input_ids.device
    tokens = torch.full((n, total), config.pad_token_id, dtype=torch.long, device=device)
    tokens[:, :prompt_len] = input_ids
    token_is_real = torch.zeros(n, total, dtype=torch.bool, device=device)
    token_is_real[:, :prompt_len] = real
    logprobs = torch.zeros(n, config.max_new_tokens, dtype=torch.float32, device=device)
    generator = None
    if config.do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(config.seed if config.seed is not None else torch.seed())

    with DecodingBatch(model, expected_rows=n, compile_step=config.compile_step) as batch:
        if speculates(batch, n, config):
            return prompt_lookup_greedy(batch, input_ids, real, config, stop, on_token)
        logits = batch.add(input_ids, real, budget=config.max_new_tokens)
        live = torch.arange(n, device=device)  # rows still decoding, in the batch's order
        steps = 0
        for step in range(config.max_new_tokens):
            cur = prompt_len + step
            if (bad := non_finite(logits)) is not None:
                raise NonFiniteLogits(bad[1], f"step {step + 1}", int(live[bad[0]]))
            scores = process_logits(
                logits, tokens[live, :cur], token_is_real[live, :cur], step, config
            )
            if config.do_sample:
                scores = sampling_filter(scores, config)
                chosen = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)[:, 0]
            else:
                chosen = scores.argmax(dim=-1)
            logprobs[live, step] = scores.log_softmax(dim=-1).gather(1, chosen[:, None])[:, 0]
            tokens[live, cur] = chosen
            token_is_real[live, cur] = True
            steps = step + 1
            if on_token is not None and live[0] == 0:
                on_token(int(chosen[0]))
            done = chosen == config.eos_token_id
            if stop is not None:
                done |= stop(tokens[live, : cur + 1])
            if step + 1 == config.max_new_tokens:
                break
            if bool(done.any()):
                keep = (~done).nonzero()[:, 0]
                if keep.numel() == 0:
                    break
                live, chosen = live[keep], chosen[keep]
                batch.keep(keep)
            logits = batch.step(chosen)
    return GenerationOutput(tokens[:, : prompt_len + steps], logprobs[:, :steps], prompt_len)
