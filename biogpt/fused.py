"""One decoding step of one row as one compiled call, on the CPU: every layer of an fp32
model, from the new token's embedding to its logits.

At batch 1 a step is the weights streaming from memory (`biogpt.gemv`) plus small work in
between: layer norms, attention over the cache, GELU, residual sums. Run op by op from
Python that small work costs 7-10% of an fp32 step of the 347M model in dispatch alone
(`benchmarks/decode_overhead.py`); `FusedStep` runs the whole step in the compiled
extension (biogpt/_cpu.c) in one OpenMP parallel region, so a step costs what its products
cost. The products are the gemv kernel's, split over the threads as `gemv.Matrix` splits
them; layer norms (statistics in double), softmax and GELU (erf) are single-row C
arithmetic, which is why the logits match the op-by-op step closely but not bit for bit.

It runs a `BioGPT` in fp32 on the CPU, in eval mode, with plain or `GemvLinear` layers
(`pack(rows=1)`, what `generate` does for one row), decoding one row whose cache it is
handed; `FusedStep.build` says None where any of that does not hold, and decoding then
takes the op-by-op step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from biogpt import gemv
from biogpt.cache import KVCache
from biogpt.gemv import _cpu
from biogpt.packing import GemvLinear

# Field counts of the plan table (the P_* and L_* enums of _cpu.c).
_HEADER_FIELDS = 12
_LAYER_FIELDS = 16


def _dense(layer: nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """The fp32 row-major weight and fp32 bias a layer multiplies by, if it holds them as
    they are (nn.Linear, GemvLinear); None for packed or quantised layers."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, Tensor) or weight.dtype != torch.float32:
        return None
    if not weight.is_contiguous() or not isinstance(layer, nn.Linear | GemvLinear):
        return None
    bias = layer.matrix.bias if isinstance(layer, GemvLinear) else layer.bias
    return weight, None if bias is None else bias.detach().float().contiguous()


class FusedStep:
    """The compiled decoding step of one row for one model, holding the table of its
    weights' addresses (and the tensors behind them, so that they stay alive). Build one
    per `generate` call with `build`: the table is only valid while the model's weights
    stay where they are."""

    def __init__(self, model: nn.Module, plan: list[int], keep: list[Tensor]) -> None:
        config = model.config
        self.plan = torch.tensor(plan, dtype=torch.int64)
        self._keep = keep
        self.vocab_size = config.vocab_size
        self.position_rows = config.max_positions + 2
        self.padding_idx = config.pad_token_id
        self.embed_scale = float(config.embed_scale)
        self.eps = float(config.layer_norm_eps)
        self.num_layers, self.num_heads = config.num_layers, config.num_heads

    @classmethod
    def build(cls, model: nn.Module) -> FusedStep | None:
        """The step for `model`, or None where it cannot run it (see the module docstring)."""
        if not gemv.available() or model.training or getattr(model, "biogpt", None) is None:
            return None
        decoder = model.biogpt
        embed = decoder.embed_tokens.weight
        if embed.dtype != torch.float32 or embed.device.type != "cpu":
            return None
        head = _dense(model.output_projection)
        if head is None or head[1] is not None:
            return None
        config = model.config
        keep: list[Tensor] = []

        def address(tensor: Tensor | None) -> int:
            if tensor is None:
                return 0
            tensor = tensor.detach()
            if tensor.dtype != torch.float32 or not tensor.is_contiguous():
                raise _CannotFuse
            keep.append(tensor)
            return tensor.data_ptr()

        try:
            plan = [
                config.num_layers,
                config.hidden_size,
                config.num_heads,
                config.intermediate_size,
                config.vocab_size,
                0,  # the cache's capacity, set per call
                decoder.embed_positions.weight.shape[0],
                address(embed),
                address(decoder.embed_positions.weight),
                address(decoder.layer_norm.weight),
                address(decoder.layer_norm.bias),
                address(head[0]),
            ]
            for layer in decoder.layers:
                plan += [address(t) for t in _layer_tensors(layer)]
        except _CannotFuse:
            return None
        if len(plan) != _HEADER_FIELDS + _LAYER_FIELDS * config.num_layers:
            raise AssertionError("the plan table does not match _cpu.c's layout")
        return cls(model, plan, keep)

    def __call__(self, token: int, cache: KVCache) -> Tensor:
        """Feed `token` as the next token of the cache's one row: next-token logits (1, V)
        in fp32. The cache gets the token's keys and values and advances by one."""
        if cache.batch_size != 1 or cache.keys.dtype != torch.float32:
            raise ValueError("the fused step decodes one row with an fp32 cache")
        if cache.keys.shape[0] != self.num_layers or not cache.keys.is_contiguous():
            raise ValueError("the cache does not belong to this model")
        if int(self.plan[5]) != cache.capacity:
            self.plan[5] = cache.capacity
        seen = int(cache.seen[0])
        logits = torch.empty(1, self.vocab_size, dtype=torch.float32)
        _cpu.decode_step(
            self.plan.data_ptr(),
            cache.keys.data_ptr(),
            cache.values.data_ptr(),
            cache.mask.data_ptr() if cache.padded else 0,
            token,
            seen + 1 + self.padding_idx,  # fairseq's position of the next real token
            cache.length,
            logits.data_ptr(),
            torch.get_num_threads(),
            self.embed_scale,
            self.eps,
        )
        cache.advance_real_token()
        return logits


class _CannotFuse(Exception):
    """A weight is not an fp32 row-major tensor the step can read."""


def _layer_tensors(layer: nn.Module) -> list[Tensor | None]:
    """One decoder layer's weights in the order of _cpu.c's L_* fields."""
    attention = layer.self_attn
    if attention.qkv_proj is not None:  # fused: one [3H, H] weight and a [3H] bias
        fused = _dense(attention.qkv_proj)
        if fused is None:
            raise _CannotFuse
        weights, biases = fused[0].chunk(3), fused[1].chunk(3)
        qkv = [t for pair in zip(weights, biases, strict=True) for t in pair]
    else:
        qkv = []
        for name in ("q_proj", "k_proj", "v_proj"):
            qkv += _checked(getattr(attention, name))
    return [
        layer.self_attn_layer_norm.weight,
        layer.self_attn_layer_norm.bias,
        *qkv,
        *_checked(attention.out_proj),
        layer.final_layer_norm.weight,
        layer.final_layer_norm.bias,
        *_checked(layer.fc1),
        *_checked(layer.fc2),
    ]


def _checked(layer: nn.Module) -> tuple[Tensor, Tensor | None]:
    dense = _dense(layer)
    if dense is None:
        raise _CannotFuse
    return dense
