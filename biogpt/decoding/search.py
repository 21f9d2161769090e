"""`generate`: greedy decoding, sampling and beam search over an explicit KV cache.

The semantics follow transformers' `generate()` (which matches fairseq for the settings the
BioGPT release used), so numbers stay comparable with published ones: logits are processed
in transformers' order (`logits.process_logits`), and beam search scores and stops as it
does (`beam`). What differs is the engine (`steps.DecodingBatch`): the cache is allocated
once per call, rows that finish (greedy, sampling) or items that are decided (beam search)
leave the batch so they stop costing work, and on the CPU the step runs on the engine's
kernels.

Padding: prompts may be left- or right-padded; `attention_mask` says which tokens are real.
Each row decodes exactly as it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from biogpt.decoding.beam import beam_search
from biogpt.decoding.config import GenerationConfig
from biogpt.decoding.greedy import greedy_or_sample
from biogpt.decoding.output import GenerationOutput, NonFiniteLogits, StopCriterion, TokenCallback
from biogpt.errors import BioGPTError
from biogpt.model import BioGPT

__all__ = [
    "GenerationOutput",
    "NonFiniteLogits",
    "StopCriterion",
    "TokenCallback",
    "generate",
    "left_pad",
]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token rows of different lengths as left-padded ids (B, T) and attention mask (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


# --- Entry points -----------------------------------------------------------------------------


@torch.inference_mode()
def generate(
    model: BioGPT,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    config: GenerationConfig | None = None,
    stop: StopCriterion | None = None,
    on_token: TokenCallback | None = None,
    **options,
) -> GenerationOutput:
    """Continue each prompt row of `input_ids` (B, T); see `GenerationConfig` for options.

    `stop(rows)` may end rows early (stop strings); `on_token(id)` receives each new token of
    row 0 as it is chosen (streaming; greedy and sampling only). Logits that hold NaN or inf
    raise `NonFiniteLogits` naming the step and the prompt row.
    """
    config = GenerationConfig.from_options(config, **options)
    config.validate()
    if input_ids.dim() != 2:
        raise BioGPTError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise BioGPTError("empty prompt: input_ids has no tokens (start prompts with </s> = 2)")
    input_ids = input_ids.to(model.device)
    real = (
        torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is None
        else attention_mask.to(model.device).bool()
    )
    if real.shape != input_ids.shape:
        raise BioGPTError(
            f"attention_mask shape {tuple(real.shape)} differs from input_ids {tuple(input_ids.shape)}"
        )
    if not bool(real.any(dim=1).all()):
        raise BioGPTError("a prompt row has no real tokens (its attention_mask is all zeros)")
    longest = int(real.sum(dim=1).max())
    if longest + config.max_new_tokens > model.config.max_positions:
        raise BioGPTError(
            f"prompt of {longest} tokens + max_new_tokens {config.max_new_tokens} exceeds the "
            f"model's {model.config.max_positions} positions; shorten one of them"
        )
    if int(input_ids.max()) >= model.config.vocab_size or int(input_ids.min()) < 0:
        raise BioGPTError(
            f"input_ids hold ids outside the vocabulary (0..{model.config.vocab_size - 1})"
        )
    if on_token is not None and (config.num_beams > 1 or config.num_return_sequences > 1):
        raise BioGPTError("streaming needs num_beams=1 and num_return_sequences=1")

    if config.num_beams > 1:
        return beam_search(model, input_ids, real, config, stop)
    n_ret = config.num_return_sequences
    if n_ret > 1:
        input_ids = input_ids.repeat_interleave(n_ret, 0)
        real = real.repeat_interleave(n_ret, 0)
    try:
        return greedy_or_sample(model, input_ids, real, config, stop, on_token)
    except NonFiniteLogits as err:  # a row of the repeated prompts: name the prompt
        raise err.renumbered(err.index // n_ret) from None
