"""Several prompts run into the KV cache in one pass over the weights, each computed exactly as
it is alone: how the rows that join a running batch at the same time share the cost of
reading the weights.

A prompt of a few dozen tokens costs about as much as one decoding step of the whole batch
(the weights are read once however many rows a product takes, up to its kernel's limit), so
eight prompts joining one after another cost eight such passes. Packed, their tokens are
the rows of one product per matrix. That gives each prompt the result it gets alone only
where nothing it meets depends on the other rows:
- the products go through the gemv kernel (`GemvLinear`, q/k/v fused), which sums every
  output in the same order whatever the other rows are, in blocks of at most the rows one
  call takes; a prompt alone takes that kernel too as long as it is no longer than that
  (`packable`), which is why a longer one is left to the ordinary forward pass;
- the work between products runs per prompt, on a tensor of the prompt's own shape (layer
  norms, GELU, attention over its own keys): PyTorch's kernels may round an element
  differently in a larger tensor (a vectorised loop's scalar tail, SDPA's blocking);
- embeddings, scaling and residual sums are single-element sums and products, which round
  alike in any shape.
The prompts' keys and values go into one cache, each row aligned on its last slot with
masked slots before it (as `KVCache.join` aligns rows), so each row then decodes as alone.

Shapes: n prompts, T_i tokens each, S the longest, H hidden, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biogpt.cache import KVCache, padding_positions
from biogpt.cpu.layers import GemvLinear, InferenceAttention
from biogpt.model import BioGPT, DecoderLayer, attend


def rows_per_call(layer: nn.Module) -> int:
    """Rows of x `layer` takes through the gemv kernel in one call (0: it does not)."""
    return layer.matrix.max_rows if isinstance(layer, GemvLinear) else 0


def packable(model: BioGPT, length: int) -> bool:
    """Whether a prompt of `length` tokens can be packed with others: every matrix of `model`
    takes it through the gemv kernel alone as well (see the module docstring)."""
    if model.training or not 0 < length <= model.config.max_positions:
        return False
    for layer in model.biogpt.layers:
        assert isinstance(layer, DecoderLayer)
        attention = layer.self_attn
        if not isinstance(attention, InferenceAttention):
            return False
        for product in (attention.qkv_proj, attention.out_proj, layer.fc1, layer.fc2):
            if rows_per_call(product) < length:
                return False
    return rows_per_call(model.output_projection) >= 1


def products(layer: nn.Module, x: Tensor) -> Tensor:
    """A linear layer on x (R, in): a gemv kernel layer in blocks of the rows one call takes,
    any other in one call. (R, out)"""
    block = rows_per_call(layer)
    if block == 0 or x.shape[0] <= block:
        return layer(x)
    return torch.cat([layer(rows) for rows in x.split(block)])


def prefill_each(model: BioGPT, prompts: list[Tensor], capacity: int) -> tuple[Tensor, KVCache]:
    """Run unpadded prompts (T_i,), each `packable`, into a new cache of n rows and
    `capacity` slots (row i's tokens in the last T_i of the first S slots); their next-token
    logits (n, V) in fp32 and the cache, each row's as `prefill` gives it for the prompt
    alone."""
    decoder, config = model.biogpt, model.config
    lengths = [int(p.numel()) for p in prompts]
    longest = max(lengths)
    ends = torch.tensor(lengths).cumsum(0).tolist()
    spans = [slice(end - t, end) for end, t in zip(ends, lengths, strict=True)]
    cache = model.new_cache(len(prompts), capacity)
    ids = torch.cat(prompts).to(model.device)  # (sum T_i,)
    # fairseq's positions of each prompt alone, as a fresh cache numbers them
    real = torch.ones(1, longest, dtype=torch.bool, device=model.device)
    numbered = padding_positions(real, config.pad_token_id)[0]  # (S,)
    positions = torch.cat([numbered[:t] for t in lengths])
    x = decoder.embed_tokens(ids) * config.embed_scale + decoder.embed_positions(positions)
    x = x[None]  # (1, sum T_i, H)
    for i, layer in enumerate(decoder.layers):
        assert isinstance(layer, DecoderLayer)
        normed = _each(layer.self_attn_layer_norm, x, spans)
        x = x + _attention(layer, normed, spans, longest, cache, i)
        hidden = products(layer.fc1, _each(layer.final_layer_norm, x, spans)[0])[None]
        x = x + products(layer.fc2, _each(F.gelu, hidden, spans)[0])[None]
    last = torch.tensor([end - 1 for end in ends], device=model.device)
    x = _each(decoder.layer_norm, x, spans)[0, last]  # (n, H)
    for row, t in enumerate(lengths):
        cache.mask[row, longest - t : longest] = True
    cache.seen = torch.tensor(lengths, device=cache.seen.device)
    cache.length = longest
    cache.padded = min(lengths) < longest
    return products(model.output_projection, x).float(), cache


def _each(function: Callable[[Tensor], Tensor], x: Tensor, spans: list[slice]) -> Tensor:
    """`function` applied to each prompt's tokens of x (1, R, ...) on its own: (1, R, ...)."""
    return torch.cat([function(x[:, span]) for span in spans], dim=1)


def _attention(
    layer: DecoderLayer,
    x: Tensor,
    spans: list[slice],
    longest: int,
    cache: KVCache,
    index: int,
) -> Tensor:
    """Self-attention of layer `index` over each prompt's own tokens, as alone (causal, no
    mask); the keys and values go into row i of `cache`, ending at slot `longest`. (1, R, H)"""
    attention = layer.self_attn
    assert isinstance(attention, InferenceAttention)
    h = x.shape[-1]
    heads, head_dim = attention.num_heads, attention.head_dim
    qkv = products(attention.qkv_proj, x[0])[None]  # (1, R, 3H)
    outputs = []
    for row, span in enumerate(spans):
        t = span.stop - span.start
        q, k, v = (
            y.view(1, t, heads, head_dim).transpose(1, 2) for y in qkv[:, span].split(h, dim=-1)
        )  # (1, nh, T_i, hd)
        slots = slice(longest - t, longest)
        cache.keys[index, row, :, slots] = k[0]
        cache.values[index, row, :, slots] = v[0]
        k, v = (
            cache.keys[index, row : row + 1, :, slots],
            cache.values[index, row : row + 1, :, slots],
        )
        y = attend(q, k, v, None, 0.0)  # (1, nh, T_i, hd)
        outputs.append(y.transpose(1, 2).reshape(1, t, h))
    return products(attention.out_proj, torch.cat(outputs, dim=1)[0])[None]
