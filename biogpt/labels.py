"""Labels and the positions they sit at: what the model's losses, training and decoding share.

A causal LM's labels are aligned with its inputs (`labels[:, t]` is the token at t); the
logits at t predict the token at t + 1, so every loss shifts the labels left by one, and the
last position of a row predicts nothing. Shapes: B rows, T positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100  # label value that the loss skips (the PyTorch and Hugging Face convention)


def next_token_targets(labels: Tensor) -> Tensor:
    """The target of each position (B, T): the label one to the right, IGNORE_INDEX at the end.

    Shifting the labels rather than slicing the logits keeps a (B*T, V) view of the logits
    free of a copy.
    """
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def last_real_index(real: Tensor) -> Tensor:
    """Index of the rightmost real token of each row (B,), whichever side the padding is on.

    `real` (B, T) is True (or nonzero) at real tokens; a row with none gives 0.
    """
    index = torch.arange(real.shape[1], device=real.device)
    return (index * real).argmax(dim=1)
