"""The layers a model runs on once the engine has prepared it (`biogpt.cpu.packing`):
linear layers on the fastest CPU kernel at hand, and attention over their fused q/k/v.

Decoding one token multiplies a single row by every weight matrix, so its speed is the
speed at which the weights stream from memory; the layers here differ in how they hold the
weights so that a kernel streams them faster than PyTorch's default CPU matmul does for
that shape (`benchmarks/gemv.py` and `benchmarks/generate.py` measure each):
- `GemvLinear`: the weight as it is (fp32 or bf16, row-major, not copied); up to
  `gemv.MAX_ROWS` rows (`gemv.MAX_FP32_ROWS` in fp32: a short prompt) through the compiled
  gemv kernel in one pass over W, more through PyTorch's kernels. What decoding uses for 1
  to 8 rows where the kernel is built.
- `PackedLinear`: the weight reordered once into oneDNN's blocked layout for a given
  number of rows (fp32, bf16), for more rows or where the kernel is missing.
- `HalfLinear`: a bf16 or fp16 weight held in fp16 for fbgemm's fp16-weight kernel, which
  multiplies and hands the logits over in fp32; that keeps bf16 decoding's choice of token
  that of fp32 (bf16-rounded logits tie and swap near the top). Its layout serves every row
  count, so once made it is kept.
- `Int8Linear`: int8 weights, one scale per output row; weight-only on the gemv kernel for
  decoding steps, int8 products for a prompt's tokens (see the class).
Each stands in for an `nn.Linear` without changing the model's state dict: it saves the
replaced layer's `weight` and `bias`, and `to_linear` gives the plain layer back. Each is
inference only.

`InferenceAttention` stands in for the model's attention: q, k and v in one matrix (one
pass over the input), then the model's own attention arithmetic (`biogpt.model.attend`).

Shapes: N rows, in/out features, B batch, nh heads, T new tokens, S keys, hd head dim.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biogpt.cache import KVCache
from biogpt.cpu import gemv
from biogpt.errors import BioGPTError
from biogpt.model import Attention, attend

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


HALF_DTYPES = (torch.bfloat16, torch.float16)  # what `HalfLinear` runs, where fbgemm is


def has_fbgemm() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


class InferenceLinear(nn.Module):
    """What a layer standing in for an nn.Linear shares, packed or int8: its state dict
    holds the replaced layer's keys (`weight` as `dense_weight()` gives it, `bias`), and
    `to_linear` gives the plain layer back. Subclasses set `in_features`, `out_features`,
    `bias` and `kind`, and define `forward` and `dense_weight`."""

    kind = ""
    in_features: int
    out_features: int
    bias: Tensor | None

    def dense_weight(self) -> Tensor:
        raise NotImplementedError

    def to_linear(self) -> nn.Linear:
        weight = self.dense_weight()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta", dtype=weight.dtype)  # fmt: skip
        linear.weight = nn.Parameter(weight)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias)
        return linear

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        destination[prefix + "weight"] = self.dense_weight()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.kind}"

    def train(self, mode: bool = True) -> InferenceLinear:
        if mode:
            raise BioGPTError(
                f"a {type(self).__name__} is for inference only; biogpt.cpu.release(model) "
                "gives the model plain layers to train"
            )
        return super().train(False)


class PackedLinear(InferenceLinear):
    """`y = x W^T + b` with W in oneDNN's layout. Inference only: it has no gradient."""

    kind = "packed"

    def __init__(self, weight: Tensor, bias: Tensor | None, rows: int = 1) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.rows = rows
        # The layout oneDNN picks depends on the number of rows it is told to expect:
        # fp32 weights packed for 1 row run 5 rows at half the speed, and the reverse.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
        self.bias = None if bias is None else bias.detach().clone()

    @classmethod
    def from_linear(cls, linear: nn.Linear, rows: int = 1) -> PackedLinear:
        return cls(linear.weight, linear.bias, rows)

    def repack(self, rows: int) -> None:
        """Reorder the weight for `rows` input rows (decoding batch size x beams)."""
        if rows != self.rows:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.dense_weight(), rows)
            self.rows = rows

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def dense_weight(self) -> Tensor:
        return self.packed.to_dense()


class Scratch:
    """Reusable buffers, one per dtype, grown as needed: what packing converts and fuses
    weights in, instead of fresh tensors whose freed holes the allocator would keep."""

    def __init__(self) -> None:
        self.buffers: dict[torch.dtype, Tensor] = {}

    def tensor(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """An uninitialised tensor of `shape`, in this scratch's buffer for `dtype`."""
        size = math.prod(shape)
        if size > self.buffers.get(dtype, torch.empty(0)).numel():
            self.buffers[dtype] = torch.empty(size, dtype=dtype)
        return self.buffers[dtype][:size].view(shape)

    def fp32_copy(self, weight: Tensor) -> Tensor:
        return self.tensor(tuple(weight.shape), torch.float32).copy_(weight)


class HalfLinear(InferenceLinear):
    """`y = x W^T + b` for a bf16 (or fp16) model, on fbgemm's fp16-weight kernel: W is held in fp16
    (the same bytes as bf16), x is taken in fp32 and the product comes out in fp32, then in
    the input's dtype, or in `out_dtype` when one is given (the output projection gives fp32
    logits). Inference only.

    bf16 -> fp16 is exact except for weights below 2^-17 in magnitude, which fp16 rounds
    (by less than 2^-25), and above 65504, which it cannot hold (they are clamped): the
    exact bf16 values of those few (about 0.02% of a trained layer) are kept aside, so
    `dense_weight` and the state dict give the bf16 weight back bit for bit. Large matrices
    are packed in blocks of `BLOCK_ROWS` rows, each converted to fp32 in `scratch` (shared
    by the layers packed together) rather than in a fresh tensor every time: freed between
    the long-lived packed weights, those would be holes that the allocator keeps.
    """

    kind = "fp16 weights, fp32 products"
    BLOCK_ROWS = 4096

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        out_dtype: torch.dtype | None = None,
        scratch: Scratch | None = None,
    ) -> None:
        super().__init__()
        if weight.dtype not in HALF_DTYPES:
            raise BioGPTError(f"HalfLinear takes bf16 or fp16 weights, not {weight.dtype}")
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        self.out_dtype = out_dtype
        self.bias = None if bias is None else bias.detach().clone()
        self.blocks, self.exceptions = [], []
        scratch = scratch or Scratch()
        blocks = -(-self.out_features // self.BLOCK_ROWS)
        biases = [None] * blocks if bias is None else bias.detach().float().split(self.BLOCK_ROWS)
        with _fbgemm():
            for w, b in zip(weight.detach().split(self.BLOCK_ROWS), biases, strict=True):
                self.exceptions.append(self._fp16_misfits(w))
                fp32 = scratch.fp32_copy(w).clamp_(-65504.0, 65504.0)
                self.blocks.append(torch.ops.quantized.linear_prepack_fp16(fp32, b))

    @staticmethod
    def _fp16_misfits(w: Tensor) -> tuple[Tensor, Tensor]:
        """Flat positions and exact values of the weights in `w` that the packed fp16 copy
        cannot hold, read from their bits. bf16: nonzero ones below 2^-17 (biased exponent
        under 110) and ones above 65504, inf and nan (exponent 143 or more); fp16: inf and
        nan (exponent 31), which the clamp to the finite range would change."""
        flat, found = w.reshape(-1), []
        for start in range(0, flat.numel(), 2**20):  # a million at a time: small temporaries
            magnitude = flat[start : start + 2**20].view(torch.int16) & 0x7FFF
            if w.dtype == torch.bfloat16:
                odd = (magnitude >= 143 << 7) | ((magnitude < 110 << 7) & (magnitude != 0))
            else:
                odd = magnitude >= 31 << 10
            found.append(odd.nonzero()[:, 0] + start)
        where = torch.cat(found)
        return where, flat[where].clone()

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, out_dtype: torch.dtype | None = None, scratch: Scratch | None = None
    ) -> HalfLinear:
        return cls(linear.weight, linear.bias, out_dtype, scratch)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).float()
        parts = [torch.ops.quantized.linear_dynamic_fp16(flat, block) for block in self.blocks]
        y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return y.view(*x.shape[:-1], self.out_features).to(self.out_dtype or x.dtype)

    def dense_weight(self) -> Tensor:
        parts = []
        for block, (where, values) in zip(self.blocks, self.exceptions, strict=True):
            weight, _ = torch.ops.quantized.linear_unpack_fp16(block)
            weight = weight.to(self.dtype)
            weight.view(-1)[where] = values
            parts.append(weight)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class GemvLinear(InferenceLinear):
    """`y = x W^T + b` holding W as it is (fp32 or bf16, row-major, not copied): up to
    `gemv.MAX_ROWS` rows go through the compiled gemv kernel (fp32 products, fp32 result;
    one pass over W for all of them), and in fp32 up to `gemv.MAX_FP32_ROWS` (a short
    prompt, where the kernel is still ahead of PyTorch's on the same raw weights:
    benchmarks/gemv.py); more rows through PyTorch's kernels. The result is in
    the input's dtype, or in `out_dtype` when one is given (the output projection of a bf16
    model gives fp32 logits, computed in fp32 for many rows too, a block of weights at a
    time). Inference only."""

    kind = "gemv kernel for up to 8 rows (64 in fp32)"
    HEAD_BLOCK_ROWS = 4096  # rows of W widened to fp32 at a time for fp32 logits of many rows

    def __init__(self, weight: Tensor, bias: Tensor | None, out_dtype: torch.dtype | None = None):
        super().__init__()
        if weight.dtype not in gemv.KERNEL_DTYPES or not weight.is_contiguous():
            raise BioGPTError(
                f"GemvLinear takes a contiguous fp32 or bf16 weight, not {weight.dtype}"
            )
        self.out_features, self.in_features = weight.shape
        self.weight = weight.detach()  # the same storage: a tied head shares the embedding
        self.bias = None if bias is None else bias.detach()
        self.matrix = gemv.Matrix(self.weight, self.bias)  # holds an fp32 bias for the kernel
        self.out_dtype = out_dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, out_dtype: torch.dtype | None = None) -> GemvLinear:
        return cls(linear.weight, linear.bias, out_dtype)

    def forward(self, x: Tensor) -> Tensor:
        out_dtype = self.out_dtype or x.dtype
        if 0 < x.numel() <= self.matrix.max_rows * self.in_features:
            y = self.matrix(x)  # a few rows (a short prompt): still one pass over W
        elif out_dtype == torch.float32 and self.weight.dtype != torch.float32:
            y = self._fp32_products(x.reshape(-1, self.in_features).float())
        else:
            return F.linear(x, self.weight, self.bias).to(out_dtype)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if out_dtype == torch.float32 else y.to(out_dtype)

    def _fp32_products(self, x: Tensor) -> Tensor:
        """x (N, in) times the half-precision weight in fp32, one block of rows at a time."""
        parts = []
        for start in range(0, self.out_features, self.HEAD_BLOCK_ROWS):
            block = slice(start, start + self.HEAD_BLOCK_ROWS)
            bias = None if self.matrix.bias is None else self.matrix.bias[block]
            parts.append(F.linear(x, self.weight[block].float(), bias))
        return torch.cat(parts, dim=-1)

    def dense_weight(self) -> Tensor:
        return self.weight


class FusedQKV:
    """What a fused q/k/v layer shares, whatever its kernel: it is the `qkv_proj` of an
    `InferenceAttention`, one [3H, H] matrix in q, k, v order, and its state dict entries
    are still the three projections' own. Needs `dense_weight()`, `bias` and `out_features`."""

    names = ("k_proj", "v_proj", "q_proj")  # the order Hugging Face lists them in

    def split(self) -> dict[str, nn.Linear]:
        """The three projections as plain layers again."""
        h = self.out_features // 3  # type: ignore[attr-defined]
        weights = self.dense_weight().split(h)  # type: ignore[attr-defined]
        biases = self.bias.split(h)  # type: ignore[attr-defined]
        layers = {}
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weights, biases, strict=True):
            layer = nn.Linear(h, h, device="meta", dtype=w.dtype)
            layer.weight, layer.bias = nn.Parameter(w.clone()), nn.Parameter(b.clone())
            layers[name] = layer
        return layers

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        base = prefix[: -len("qkv_proj.")]
        layers = self.split()
        for name in self.names:
            destination[base + name + ".weight"] = layers[name].weight.detach()
            destination[base + name + ".bias"] = layers[name].bias.detach()


def fused_qkv_weights(attention: Attention, scratch: Scratch) -> tuple[Tensor, Tensor]:
    """q, k and v of one attention layer as one [3H, H] weight (written into `scratch`) and
    one [3H] bias."""
    q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
    weight = scratch.tensor((3 * q.weight.shape[0], q.weight.shape[1]), q.weight.dtype)
    torch.cat([q.weight.detach(), k.weight.detach(), v.weight.detach()], out=weight)
    return weight, torch.cat([q.bias.detach(), k.bias.detach(), v.bias.detach()])


class PackedQKV(FusedQKV, PackedLinear):
    """The q, k and v projections of one attention layer packed as one [3H, H] matrix."""


class HalfQKV(FusedQKV, HalfLinear):
    """The q, k and v projections of one bf16 or fp16 attention layer as one fp16 [3H, H]
    matrix."""


class GemvQKV(FusedQKV, GemvLinear):
    """The q, k and v projections of one attention layer as one [3H, H] matrix for the gemv
    kernel."""


@contextmanager
def _fbgemm() -> Iterator[None]:
    """PyTorch's quantised engine set to fbgemm (for prepacking) and restored afterwards."""
    if not has_fbgemm():
        raise BioGPTError("fp16-weight layers need PyTorch's fbgemm kernels (x86 CPUs only)")
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        yield
    finally:
        torch.backends.quantized.engine = engine


def _has_vnni() -> bool:
    """Whether the CPU multiplies int8 with VNNI instructions (int32 sums throughout)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


# Without VNNI, int8 matmuls sum pairs of products in 16 bits, which can saturate: there,
# the tokens of a prompt are multiplied by the dequantised weights in fp32 instead.
INT8_MATMUL = _has_vnni()
_TINY = torch.finfo(torch.float32).tiny  # the smallest scale: an all-zero row stays zero


def _symmetric_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each row of x (N, k) rounded to 8-bit steps of its largest magnitude / 127: the int8
    steps (N, k) and the scales (N,), in fp32."""
    scale = (x.abs().amax(dim=1) / 127).clamp_min(_TINY)
    steps = x / scale[:, None]  # the one fp32 temporary
    return steps.round_().clamp_(-127, 127).to(torch.int8), scale


class Int8Linear(InferenceLinear):
    """`y = x W^T + b` with W held in int8, one fp32 scale per output row (symmetric: the
    row's largest magnitude / 127). Inference only; the products are computed from fp32
    inputs and the result comes back in the input's dtype.

    One token per row (a decoding step: x of shape (N, in) or (N, 1, in), any N) is
    weight-only: the gemv kernel widens each weight exactly against the fp32 rows and
    multiplies each row's fp32 sum by its scale, one pass over the int8 weights (a quarter
    of fp32's bytes) for every 8 rows. The tokens of sequences (x of shape (..., T, in),
    T > 1: a prompt) are multiplied in int8 instead: each token's row is quantised to 8 bits
    with its own scale, the products summed exactly in int32 by PyTorch's int8 matmul
    (`torch._int_mm`, several times fp32's speed: `benchmarks/int8_matmul.py`) and rescaled in fp32. So a row's result depends
    on its own values and on whether it is a decoding step or a prompt's token, never on
    the other rows of the call. Where the kernel is missing, every call takes the prompt's
    way; where the CPU lacks VNNI, that way multiplies the dequantised weights in fp32."""

    kind = "int8"
    BLOCK_ROWS = 4096  # rows of W dequantised at a time where int8 matmuls are not used

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight, self.scale = _symmetric_int8(weight.detach().float())
        self.bias = None if bias is None else bias.detach().float().clone()
        self.matrix = gemv.Matrix(self.weight, self.bias, self.scale) if gemv.available() else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).float()
        sequences = x.dim() >= 3 and x.shape[-2] > 1
        if flat.shape[0] == 0:
            y = flat.new_zeros(0, self.out_features)
        elif self.matrix is not None and not sequences:
            parts = [self.matrix(rows) for rows in flat.split(gemv.MAX_ROWS)]
            y = parts[0] if len(parts) == 1 else torch.cat(parts)
        elif INT8_MATMUL:
            y = self._int8_products(flat)
        else:
            y = self._dequantised_products(flat)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def _int8_products(self, x: Tensor) -> Tensor:
        """x (N, in) quantised row by row and multiplied in int8: (N, out) in fp32."""
        steps, x_scale = _symmetric_int8(x)
        sums = torch._int_mm(steps, self.weight.t())  # exact int32
        y = sums.float() * (x_scale[:, None] * self.scale)
        return y if self.bias is None else y + self.bias

    def _dequantised_products(self, x: Tensor) -> Tensor:
        """x (N, in) times the dequantised weights in fp32, a block of rows at a time."""
        parts = []
        for start in range(0, self.out_features, self.BLOCK_ROWS):
            block = slice(start, start + self.BLOCK_ROWS)
            bias = None if self.bias is None else self.bias[block]
            parts.append(F.linear(x, self.weight[block].float() * self.scale[block, None], bias))
        return torch.cat(parts, dim=-1)

    def dense_weight(self) -> Tensor:
        """The dequantised weight (fp32)."""
        return self.weight.float() * self.scale[:, None]


class Int8QKV(FusedQKV, Int8Linear):
    """The q, k and v projections of one attention layer as one int8 [3H, H] matrix."""


class InferenceAttention(nn.Module):
    """The model's self-attention with q, k and v as one fused layer (`qkv_proj`, one of
    the `FusedQKV` layers) and the output projection as the engine made it. Its state dict
    holds the model's own keys (`k_proj.weight`, ... `out_proj.bias`).

    `plain` is the attention module it stands in for, emptied of its projections (kept,
    not registered, so that `biogpt.cpu.release` can put it back as it was)."""

    def __init__(self, plain: Attention, qkv_proj: nn.Module, out_proj: nn.Module) -> None:
        super().__init__()
        self.num_heads = plain.num_heads
        self.head_dim = plain.head_dim
        self.qkv_proj = qkv_proj
        self.out_proj = out_proj
        self.__dict__["plain"] = plain  # not a child: it has no weights of its own now

    def forward(
        self, x: Tensor, mask: Tensor | None, cache: KVCache | None = None, layer: int = 0
    ) -> Tensor:
        b, t, h = x.shape

        def heads(y: Tensor) -> Tensor:
            return y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)

        q, k, v = (heads(y) for y in self.qkv_proj(x).split(h, dim=-1))
        if cache is not None:
            k, v = cache.write(layer, k, v)  # (B, nh, S, hd)
        y = attend(q, k, v, mask, 0.0)  # the model's own attention, (B, nh, T, hd)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, h))
