"""One decoding step of 1 to 8 rows as one compiled call, on the CPU: every layer of an fp32,
bf16 or int8 model, from the new tokens' embeddings to their logits. `extend` feeds several
tokens per row as rows of one step (speculative decoding's drafts): up to 64 rows x tokens
with fp32 weights, 8 with the others.

At batch 1 a step is the weights streaming from memory (`biogpt.cpu.gemv`) plus small work in
between: layer norms, attention over the cache, GELU, residual sums. Run op by op from
Python that small work costs a noticeable share of a step, in dispatch mostly
(`benchmarks/decode_overhead.py` measures it); `FusedStep` runs the whole step in the compiled
extension (biogpt/cpu/step.h) in one OpenMP parallel region, so a step costs what its products
cost. The products are the gemv kernel's, split over the threads as `gemv.Matrix` splits
them; layer norms (statistics in double), softmax and GELU (erf) are per-row C arithmetic,
which is why the logits match the op-by-op step closely but not bit for bit. Several rows
(a batch, beam search's beams) share each pass over the weights, and every row's logits
and cache entries are bit for bit those it gets decoded alone.

A bf16 model keeps its weights and cache in bf16 and multiplies with AVX512-BF16's pair
products (where the CPU has them), as its op-by-op step does, but the activations between
the products stay in fp32: only the inputs of the products and the cache entries are
rounded to bf16, where the op-by-op step rounds after every operation. Its logits are
therefore no further from an fp32 computation on the same weights than the op-by-op step's,
and nearer overall (tests/test_fused.py measures it on small models), but not the same.

An int8 model (`quantize_int8`) is an fp32 one whose products read int8 weights, each
row's sum multiplied by its scale, as its `Int8Linear` layers compute them.

It runs a `BioGPT` on the CPU in eval mode, with plain or `GemvLinear` layers (what
`biogpt.cpu.prepare` gives for up to 8 rows) or `Int8Linear` ones, decoding the rows of the cache it is
handed, up to 8;
`FusedStep.build` says None where any of that does not hold (and for layers packed another
way), and decoding then takes the op-by-op step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from biogpt.cache import KVCache
from biogpt.cpu import gemv
from biogpt.cpu.gemv import MAX_FP32_ROWS, MAX_ROWS, _cpu
from biogpt.cpu.layers import GemvLinear, Int8Linear
from biogpt.model import BioGPT, DecoderLayer

# Field counts of the plan table (the P_* and L_* enums of step.h), the header's field set
# per call, and the kinds of weights (step.h's WEIGHTS_*).
_HEADER_FIELDS = 14
_LAYER_FIELDS = 22
_CAPACITY_FIELD = 5
_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}


class _CannotFuse(Exception):
    """A weight is not a row-major tensor in the model's dtype that the step can read."""


class _Plan:
    """Builds the address table, keeping every tensor it points into alive. Embedding tables
    are read as they are, in the model's dtype, and so are matrices, in `weights` (the
    model's dtype, or int8); the small vectors (biases, layer norm scales and shifts, int8
    rows' scales) are handed over in fp32, copied if they are not."""

    def __init__(self, dtype: torch.dtype, weights: torch.dtype) -> None:
        self.dtype, self.weights = dtype, weights
        self.keep: list[Tensor] = []

    def address(self, tensor: Tensor, dtype: torch.dtype | None = None) -> int:
        """Where `tensor` lies, read as it is (it must be in `dtype`, the model's by default)."""
        tensor = tensor.detach()
        if tensor.dtype != (dtype or self.dtype) or tensor.device.type != "cpu":
            raise _CannotFuse
        if not tensor.is_contiguous():
            raise _CannotFuse
        self.keep.append(tensor)
        return tensor.data_ptr()

    def fp32_address(self, tensor: Tensor | None) -> int:
        """Where an fp32 copy of `tensor` lies (the tensor itself if it is one); 0 for None."""
        if tensor is None:
            return 0
        tensor = tensor.detach().to(torch.float32).contiguous()
        self.keep.append(tensor)
        return tensor.data_ptr()

    def linear(self, layer: nn.Module) -> tuple[list[int], int]:
        """Weight and bias of a plain, GemvLinear or Int8Linear layer, as the plan's weights
        are (packed layers refuse), and the int8 rows' scales (0 for other weights)."""
        if self.weights == torch.int8:
            if not isinstance(layer, Int8Linear):
                raise _CannotFuse
            weight, bias, scale = layer.weight, layer.bias, self.fp32_address(layer.scale)
        elif isinstance(layer, nn.Linear | GemvLinear):
            weight, scale = layer.weight, 0
            bias = layer.matrix.bias if isinstance(layer, GemvLinear) else layer.bias
        else:
            raise _CannotFuse
        return [self.address(weight, self.weights), self.fp32_address(bias)], scale

    def chunks(self, weight: Tensor, bias: Tensor | None, scale: Tensor | None) -> list[list[int]]:
        """A fused q/k/v layer's weight, bias (and scales) as three layers' fields."""
        if bias is None:
            raise _CannotFuse  # the model's attention always has biases
        scales = [None] * 3 if scale is None else scale.chunk(3)
        return [
            [self.address(w, self.weights), self.fp32_address(b), self.fp32_address(s)]
            for w, b, s in zip(weight.chunk(3), bias.chunk(3), scales, strict=True)
        ]


def _layer_fields(plan: _Plan, layer: DecoderLayer) -> list[int]:
    """One decoder layer's addresses in the order of step.h's L_* fields."""
    attention = layer.self_attn
    fused = getattr(attention, "qkv_proj", None)  # an InferenceAttention's fused q/k/v
    if fused is not None:  # one [3H, H] weight and a [3H] bias
        if isinstance(fused, Int8Linear) and plan.weights == torch.int8:
            parts = plan.chunks(fused.weight, fused.bias, fused.scale)
        elif isinstance(fused, GemvLinear) and plan.weights != torch.int8:
            parts = plan.chunks(fused.weight, fused.matrix.bias, None)
        else:
            raise _CannotFuse
        qkv = [(part[:2], part[2]) for part in parts]
    else:
        qkv = [plan.linear(getattr(attention, name)) for name in ("q_proj", "k_proj", "v_proj")]
    out, fc1, fc2 = (plan.linear(m) for m in (attention.out_proj, layer.fc1, layer.fc2))
    return [
        plan.fp32_address(layer.self_attn_layer_norm.weight),
        plan.fp32_address(layer.self_attn_layer_norm.bias),
        *(a for fields, _ in qkv for a in fields),
        *out[0],
        plan.fp32_address(layer.final_layer_norm.weight),
        plan.fp32_address(layer.final_layer_norm.bias),
        *fc1[0],
        *fc2[0],
        *(scale for _, scale in (*qkv, out, fc1, fc2)),
    ]


class FusedStep:
    """The compiled decoding step of up to 8 rows (with their drafts, up to `max_rows` rows x
    tokens) for one model, holding the table of its weights' addresses (and the tensors
    behind them, so that they stay alive). Build one per `generate` call with `build`: the
    table is only valid while the model's weights stay where they are."""

    def __init__(self, model: BioGPT, fields: list[int], plan: _Plan) -> None:
        config = model.config
        self.plan = torch.tensor(fields, dtype=torch.int64)
        self._keep = plan.keep
        self.dtype = plan.dtype
        self.vocab_size = config.vocab_size
        self.padding_idx = config.pad_token_id
        self.embed_scale = float(config.embed_scale)
        self.eps = float(config.layer_norm_eps)
        self.cache_shape = (config.num_layers, config.num_heads, config.head_dim)
        self._capacity = 0
        # rows x tokens one call takes: the kernel serves up to 64 fp32 rows of x a pass
        self.max_rows = MAX_FP32_ROWS if plan.weights == torch.float32 else MAX_ROWS

    @classmethod
    def build(cls, model: BioGPT, rows: int = 1) -> FusedStep | None:
        """The step for `model` decoding `rows` rows, or None where it cannot run it (see
        the module docstring)."""
        if not 1 <= rows <= MAX_ROWS or not gemv.available() or model.training:
            return None
        if getattr(model, "biogpt", None) is None:
            return None
        decoder = model.biogpt
        dtype = decoder.embed_tokens.weight.dtype
        if dtype not in (torch.float32, torch.bfloat16):
            return None
        if dtype == torch.bfloat16 and not gemv.bf16_dot():
            return None  # widening bf16 weights for an fp32 row would be slower than op by op
        config = model.config
        head = model.output_projection
        weights = torch.int8 if isinstance(head, Int8Linear) else dtype
        plan = _Plan(dtype, weights)
        try:
            if getattr(head, "bias", None) is not None or (
                weights == torch.int8 and dtype != torch.float32
            ):
                raise _CannotFuse
            head_fields, head_scale = plan.linear(head)
            fields = [
                config.num_layers,
                config.hidden_size,
                config.num_heads,
                config.intermediate_size,
                config.vocab_size,
                0,  # the cache's capacity, set per call
                decoder.embed_positions.weight.shape[0],
                _KINDS[weights],
                plan.address(decoder.embed_tokens.weight),
                plan.address(decoder.embed_positions.weight),
                plan.fp32_address(decoder.layer_norm.weight),
                plan.fp32_address(decoder.layer_norm.bias),
                head_fields[0],
                head_scale,
            ]
            for layer in decoder.layers:
                assert isinstance(layer, DecoderLayer)
                fields += _layer_fields(plan, layer)
        except _CannotFuse:
            return None
        if len(fields) != _HEADER_FIELDS + _LAYER_FIELDS * config.num_layers:
            raise AssertionError("the plan table does not match step.h's layout")
        return cls(model, fields, plan)

    def _check(self, cache: KVCache) -> None:
        """Refuse a cache the C step would read or write out of bounds."""
        if cache.keys.dtype != self.dtype or not 1 <= cache.batch_size <= MAX_ROWS:
            raise ValueError(
                f"the fused step decodes 1 to {MAX_ROWS} rows with a {self.dtype} cache"
            )
        keys, values, mask = cache.keys, cache.values, cache.mask
        layers, heads, head_dim = self.cache_shape
        want = (layers, cache.batch_size, heads, cache.capacity, head_dim)
        if keys.shape != want or values.shape != want or values.dtype != keys.dtype:
            raise ValueError(
                f"the cache does not belong to this model: keys {tuple(keys.shape)}, want {want}"
            )
        if mask.shape != (cache.batch_size, cache.capacity) or mask.dtype != torch.bool:
            raise ValueError("the cache's mask does not match its keys")
        if not (keys.is_contiguous() and values.is_contiguous() and mask.is_contiguous()):
            raise ValueError("the fused step needs a contiguous cache")

    def __call__(self, tokens: int | Tensor, cache: KVCache) -> Tensor:
        """Feed `tokens`, one per row of the cache (an int for a cache of one row), as each
        row's next token: next-token logits (rows, V) in fp32. The cache gets the tokens'
        keys and values and advances by one."""
        tokens = torch.as_tensor(tokens, dtype=torch.int64).reshape(-1)
        if tokens.numel() != cache.batch_size:
            raise ValueError(f"{tokens.numel()} tokens for a cache of {cache.batch_size} rows")
        return self.extend(tokens[:, None], cache)[:, 0]

    def extend(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """Feed T tokens to every row of the cache (N, T), rows x tokens at most `max_rows`:
        the logits (N, T, V) in fp32 after each token, each bit for bit what feeding the tokens
        one call at a time gives. The tokens are rows of one step (N * T of them), each at
        its own slot of its cache row, so each is computed as a one-token step computes it
        (a draft verified in one pass over the weights). The cache advances by T."""
        n, t = tokens.shape
        if n != cache.batch_size or not 1 <= n * t <= self.max_rows:
            raise ValueError(
                f"{n} x {t} tokens for a cache of {cache.batch_size} rows: the fused step "
                f"decodes 1 to {self.max_rows} rows x tokens"
            )
        self._check(cache)  # the C step trusts these shapes (a few microseconds)
        if cache.length + t > cache.capacity:  # before the mask changes
            raise IndexError(
                f"slot {cache.length + t - 1} out of range: the cache holds {cache.capacity}"
            )
        if self._capacity != cache.capacity:
            self._capacity = self.plan[_CAPACITY_FIELD] = cache.capacity
        tokens = tokens.to(torch.int64).reshape(-1).contiguous()  # row-major: (N * T,)
        # fairseq's positions of each row's next real tokens, the slots they go to, and the
        # cache row of each
        positions = cache.seen + (1 + self.padding_idx)
        if t == 1:  # a step, the common case: the fewest and cheapest tensors
            slots = torch.full((n,), cache.length, dtype=torch.int64)
            cache_rows = torch.arange(n)
        else:
            steps = torch.arange(t)
            positions = (positions[:, None] + steps).reshape(-1).contiguous()
            slots = (cache.length + steps).repeat(n)
            cache_rows = torch.arange(n).repeat_interleave(t)
        if cache.padded:  # the new slots hold real tokens: a later row of a draft sees them
            cache.mask[:, cache.length : cache.length + t] = True
        logits = torch.empty(n * t, self.vocab_size, dtype=torch.float32)
        try:
            _cpu.decode_step(
                self.plan.data_ptr(),
                cache.keys.data_ptr(),
                cache.values.data_ptr(),
                cache.mask.data_ptr() if cache.padded else 0,
                tokens.data_ptr(),
                positions.data_ptr(),
                cache_rows.data_ptr(),
                slots.data_ptr(),
                n * t,
                n,
                logits.data_ptr(),
                torch.get_num_threads(),
                self.embed_scale,
                self.eps,
            )
        except (IndexError, ValueError):  # refused before anything was written
            if cache.padded:  # so the new slots are not real after all
                cache.mask[:, cache.length : cache.length + t] = False
            raise
        if t == 1:
            cache.advance_real_token()
        else:
            cache.advance(torch.ones(n, t, dtype=torch.bool))
        return logits.view(n, t, self.vocab_size)


def gelu(x: Tensor) -> Tensor:
    """GELU (erf form) of a contiguous fp32 CPU tensor as the fused step computes it in C."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous():
        raise ValueError("gelu takes a contiguous fp32 CPU tensor")
    y = torch.empty_like(x)
    _cpu.gelu(x.data_ptr(), y.data_ptr(), x.numel())
    return y
