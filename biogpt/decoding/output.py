"""What decoding hands back, the callbacks it takes, and the error for logits gone bad."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from biogpt.errors import BioGPTError

# A stop criterion sees the token rows (N, L) after a step and says which rows must end (N,).
StopCriterion = Callable[[Tensor], Tensor]
# A streamer receives the new token of row 0 after every step.
TokenCallback = Callable[[int], None]


@dataclass
class GenerationOutput:
    """`sequences` (N, L): prompts as given followed by the new tokens, `pad_token_id` after
    a row ends. N = batch * num_return_sequences, the returns of one prompt next to each other.
    `scores`: log-probability of each new token under the processed distribution (greedy and
    sampling, (N, new)) or the length-normalised score of each hypothesis (beam search, (N,))."""

    sequences: Tensor
    scores: Tensor
    prompt_length: int


class NonFiniteLogits(BioGPTError):
    """The model's logits hold NaN or inf: weights changed after loading (loading refuses
    non-finite ones), or activations that overflow the dtype (fp16 ends at 65504).

    Without this check argmax picks token 0 from a row of NaN, sampling fails deep inside
    torch, and a score comes out as `nan`: an empty completion that looks like a result.
    `index` is the prompt (or text) of the call, counted from 0 as in the list passed in.
    """

    def __init__(self, value: str, where: str, index: int, noun: str = "prompt") -> None:
        self.value, self.where, self.index, self.noun = value, where, index, noun
        super().__init__(self.describe(f"{noun} {index}"))

    def describe(self, which: str, dtype: str = "dtype") -> str:
        """The message with the input named `which` and the dtype option spelt `dtype`."""
        return (
            f"the model's logits hold {self.value} at {self.where} ({which}); its weights or "
            f"{dtype} may be at fault"
        )

    def renumbered(self, index: int) -> NonFiniteLogits:
        """The same error for the input counted as `index` by the caller."""
        return NonFiniteLogits(self.value, self.where, index, self.noun)


def non_finite(logits: Tensor) -> tuple[int, str] | None:
    """The first row of `logits` (N, V) that holds NaN or inf, and which ("NaN" first);
    None when all are finite. Decoding calls it on every step's logits, so the common case
    is one sum (a sum is NaN or inf when a term is; the exact test runs only then, and
    clears the sum of huge finite logits that overflowed)."""
    if math.isfinite(float(logits.sum())):
        return None
    bad = ~torch.isfinite(logits)
    rows = bad.any(dim=-1).nonzero()
    if rows.numel() == 0:
        return None
    row = int(rows[0, 0])
    return row, "NaN" if bool(logits[row].isnan().any()) else "inf"
