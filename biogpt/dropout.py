"""Dropout for CPU training, with masks drawn four to a 64-bit random word.

On CPU, `torch.bernoulli_` draws a full random number per element and takes most of a
dropout's time, and attention dropout on 1024-token blocks draws many masks
(`benchmarks/train_step.py` times a training step). Here one 64-bit random word gives four 16-bit
lanes, and a lane keeps its element when it is at least the drop threshold. The drop
probability is thereby rounded to a multiple of 2**-16 (0.1 becomes 0.100006); kept
elements are scaled by 1 / (1 - p) with the exact p, as `F.dropout` does.

Attention dropout applies to the attention probabilities, inside the attention. SDPA
applies it in its own unfused math path on CPU, with torch's masks; `attention_with_dropout`
is that same computation, written out with these masks. On other devices (fast random
generators, fused attention kernels with dropout) both fall back to torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention_with_dropout", "dropout", "keep_mask"]


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> Tensor:
    """A boolean tensor of `shape`, each element True with probability 1 - p (rounded to
    a multiple of 2**-16), drawn from torch's default generator of `device`."""
    numel = 1
    for size in shape:
        numel *= size
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), 2**63 - 1)  # (almost) the full 64-bit range: every lane uniform
    lanes = words.view(torch.int16)[:numel]
    threshold = round(p * 65536) - 32768  # a lane below it drops its element
    return (lanes >= threshold).view(shape)


class _MaskedScale(torch.autograd.Function):
    """x * m where m = keep / (1 - p): forward and backward are one multiplication each."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        scaled_mask = keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(scaled_mask)
        return x * scaled_mask

    @staticmethod
    def backward(ctx, grad: Tensor):
        (scaled_mask,) = ctx.saved_tensors
        return grad * scaled_mask, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """`F.dropout(x, p, training)`, with the fast masks on CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training)
    return _MaskedScale.apply(x, p)


def attention_with_dropout(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float
) -> Tensor:
    """Scaled dot-product attention with dropout p on the probabilities, for training on CPU.

    q (B, nh, T, hd), k and v (B, nh, S, hd); `mask` a boolean (B, 1, T, S), True where a
    query may attend, or None for causal attention (T == S). Every query must see at least
    one key. Returns (B, nh, T, hd), like `F.scaled_dot_product_attention`.
    """
    b, nh, t, hd = q.shape
    s = k.shape[2]
    if mask is None:
        bias = torch.full((t, s), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
    else:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill_(~mask, float("-inf")).expand(b, nh, t, s).reshape(b * nh, t, s)
    scores = torch.baddbmm(
        bias, q.reshape(b * nh, t, hd), k.reshape(b * nh, s, hd).transpose(1, 2), alpha=hd**-0.5
    )  # (B * nh, T, S)
    probs = dropout(torch.softmax(scores, dim=-1), p, True)
    return torch.bmm(probs, v.reshape(b * nh, s, hd)).view(b, nh, t, hd)
