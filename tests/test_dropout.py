"""Fast CPU dropout masks and the attention that applies them to its probabilities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from biogpt.dropout import attention_with_dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_keeps_each_element_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    n = 1 << 20
    mask = keep_mask((n,), p, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (n,)
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(float(mask.float().mean()) - (1 - p)) < 5 * sigma
    # No lane of the 64-bit words is biased (a lane fixed by the generator's range would be).
    lanes = mask.view(-1, 4).float().mean(dim=0)
    assert (lanes - (1 - p)).abs().max() < 5 * math.sqrt(p * (1 - p) / (n / 4))


def test_keep_mask_follows_the_seed_and_odd_shapes():
    torch.manual_seed(3)
    a = keep_mask((3, 5, 7), 0.3, torch.device("cpu"))
    torch.manual_seed(3)
    b = keep_mask((3, 5, 7), 0.3, torch.device("cpu"))
    assert a.shape == (3, 5, 7) and torch.equal(a, b)
    assert not torch.equal(a, keep_mask((3, 5, 7), 0.3, torch.device("cpu")))


def test_dropout_zeroes_or_scales_and_backpropagates_through_the_same_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.25, True)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert 0.6 < float(kept.float().mean()) < 0.9
    weights = torch.randn_like(x)
    (y * weights).sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * weights / 0.75)


def test_dropout_is_the_identity_when_off():
    x = torch.randn(4, 5)
    assert dropout(x, 0.1, False) is x
    assert dropout(x, 0.0, True) is x
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))  # torch's own edge case


def qkv(b=2, nh=3, t=6, s=6, hd=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, nh, n, hd, generator=g) for n in (t, s, s))


def test_attention_without_dropout_equals_sdpa_causal_and_masked():
    q, k, v = qkv()
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(attention_with_dropout(q, k, v, None, 0.0), want)
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    mask[0, :, :, 0] = False  # row 0 never sees key 0 ...
    mask[0, 0, 0, 0] = True  # ... except query 0, which would otherwise see nothing
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(attention_with_dropout(q, k, v, mask, 0.0), want)


def test_attention_drops_probabilities_with_the_seeded_mask():
    q, k, v = (x.requires_grad_() for x in qkv())
    torch.manual_seed(7)
    got = attention_with_dropout(q, k, v, None, 0.2)
    torch.manual_seed(7)
    keep = keep_mask((2 * 3, 6, 6), 0.2, torch.device("cpu")).view(2, 3, 6, 6)
    scores = (q @ k.transpose(-1, -2)) / 2.0  # hd = 4
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    want = (scores.softmax(-1) * keep / 0.8) @ v
    torch.testing.assert_close(got, want)
    # and the gradients flow through the same mask
    g_got = torch.autograd.grad(got.sum(), (q, k, v))
    g_want = torch.autograd.grad(want.sum(), (q, k, v))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b)
