"""A decoding step with fixed shapes, for `torch.compile` and, on a GPU, CUDA graphs.

The ordinary step (`steps.decode_step`) attends to the cache slots written so far, so
each step has a new key length, and it counts slots in a Python int: compiled, it would
recompile at every step. This step computes the same thing with nothing that changes from
one step to the next but tensor contents:
- it attends over the cache's whole capacity, with a mask of the slots that hold real
  tokens (the slots not yet written are masked out, so the result is the same);
- it writes the new keys and values at a slot held in a 0-d tensor (`index_copy_`);
- the slot, the mask and each row's count of real tokens (fairseq's positions) advance in
  place, in the cache's own buffers.
So one compiled graph serves every step of a call, and with `mode="reduce-overhead"` on a
GPU it is replayed as one CUDA graph, which removes the per-kernel launch cost that
dominates a small batch there. Rows that finish keep their place in the batch (their new
tokens are discarded), since dropping them would change the shapes.

`StaticStep(model, cache)` is what `generate(..., compile_step=True)` uses for greedy
decoding and sampling. On the CPU the compiled step (where the package's own one-row step
does not run) is correct but rarely faster; its figures on GPUs come from
`benchmarks/generate_gpu.py`, which needs a CUDA device.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from biogpt.cache import KVCache
from biogpt.model import BioGPT


class _SlotWriter:
    """What the attention layers see of the cache during a static step: `write` stores the
    new token's keys and values (B, nh, 1, hd) at `slot` and returns the layer's whole
    buffers (B, nh, capacity, hd)."""

    def __init__(self, keys: Tensor, values: Tensor, slot: Tensor) -> None:
        self.keys, self.values, self.slot = keys, values, slot

    def write(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        self.keys[layer].index_copy_(2, self.slot, keys)
        self.values[layer].index_copy_(2, self.slot, values)
        return self.keys[layer], self.values[layer]


def static_step(
    model: BioGPT,
    tokens: Tensor,
    keys: Tensor,
    values: Tensor,
    mask: Tensor,
    seen: Tensor,
    slot: Tensor,
) -> Tensor:
    """Feed one real token per row `tokens` (N,) at cache slot `slot` (a (1,) long tensor):
    next-token logits (N, V) in fp32. `keys`, `values` (L, N, nh, capacity, hd), `mask`
    (N, capacity) and `seen` (N,) are a `KVCache`'s buffers; they and `slot` are updated in
    place."""
    decoder, config = model.biogpt, model.config
    positions = seen + config.pad_token_id + 1  # fairseq's position of the next real token
    x = decoder.embed_tokens(tokens[:, None]) * config.embed_scale
    x = x + decoder.embed_positions(positions[:, None])  # (N, 1, H)
    here = torch.arange(mask.shape[1], device=mask.device) == slot  # (capacity,)
    visible = mask | here  # (N, capacity): the real tokens so far and this one
    writer = _SlotWriter(keys, values, slot)
    for i, layer in enumerate(decoder.layers):
        x = layer(x, visible[:, None, None, :], writer, i)  # mask (N, 1, 1, capacity)
    x = decoder.layer_norm(x)
    logits = model.output_projection(x[:, 0]).float()
    mask.copy_(visible)
    seen.add_(1)
    slot.add_(1)
    return logits


@functools.cache
def compiled_step(mode: str | None):
    """`static_step` compiled by torch.compile in `mode` (once per mode: compiling takes
    seconds to minutes)."""
    return torch.compile(static_step, mode=mode, fullgraph=True)


class StaticStep:
    """The fixed-shape step over one cache, compiled on first use (`compile=True`: with
    torch.compile, in "reduce-overhead" mode, i.e. CUDA graphs, on a GPU) or run as it is.
    It continues from what the cache holds (e.g. after `steps.prefill`); the cache's
    Python-side `length` is not kept up to date while it runs, so the cache serves this
    step only from then on."""

    def __init__(self, model: BioGPT, cache: KVCache, compile: bool = True) -> None:
        self.model, self.cache = model, cache
        self.length = cache.length  # slots written, counted here too: reading `slot` syncs
        self.slot = torch.tensor([cache.length], device=cache.keys.device)
        on_gpu = cache.keys.device.type == "cuda"
        if compile and on_gpu:
            for buffer in (cache.keys, cache.values, cache.mask, cache.seen, self.slot):
                torch._dynamo.mark_static_address(buffer)  # CUDA graphs replay on fixed addresses
        self.run = compiled_step("reduce-overhead" if on_gpu else None) if compile else static_step
        # a CUDA graph's outputs are overwritten by its next replay
        self.copy_out = compile and on_gpu

    def __call__(self, tokens: Tensor) -> Tensor:
        """Feed one token per row (N,): next-token logits (N, V) in fp32."""
        c = self.cache
        if self.length >= c.capacity:
            raise ValueError(f"the KV cache holds {c.capacity} positions")
        logits = self.run(self.model, tokens, c.keys, c.values, c.mask, c.seen, self.slot)
        self.length += 1
        return logits.clone() if self.copy_out else logits
