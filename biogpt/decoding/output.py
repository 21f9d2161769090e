"""What decoding hands back, and the callbacks it takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

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
