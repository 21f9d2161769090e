"""CPU inference with linear layers on the fastest kernel at hand: the compiled gemv
kernel for up to 8 rows, weights prepacked for oneDNN or fbgemm otherwise.

Decoding one token multiplies a single row by every weight matrix, so its speed is the
speed at which weights stream from memory. PyTorch's default CPU matmul reaches about half
of this machine's memory bandwidth for that shape (and much less for the 5 rows of beam
search); the same weights reordered once into oneDNN's blocked layout reach about 85%.

`pack(model)` swaps every `nn.Linear` for a `PackedLinear` that holds only the reordered
weight, so memory does not grow (the tied output projection gets its own packed copy of the
embedding matrix). The swap is invisible to the rest of the code: state dicts still hold
plain `weight`/`bias` tensors, and `unpack(model)` restores ordinary layers, which the model
does by itself before training, moving or casting (see `_Base.train` and `_Base._apply`).

A bf16 (or fp16) model gets `HalfLinear` layers instead (bf16 for several rows, or where
the gemv kernel below is missing; fp16 always), on fbgemm's fp16-weight kernel. For one to
three rows it streams the weights 20-30% faster than oneDNN's bf16 kernel (26-29 against
21-24 GB/s, 2 threads), for beam search's five about as fast; it multiplies in fp32 and
hands the logits over in fp32, which is what keeps bf16 decoding's choice of token that of
fp32 (bf16-rounded logits tie and swap near the top). The price: long prompts run at fp32
arithmetic speed, half of oneDNN's bf16 (a 400-token prompt through the 347M model: 1.45
against 0.75 s), and packing takes about 4 s for that model, against 0.6 s, since fbgemm
converts element by element. Once made, that layout serves every row count, so greedy and
beam calls on one model do not repack it again.

Up to 8 rows a step (greedy decoding and sampling, beam search's five beams, small
batches), fp32 and bf16 models get `GemvLinear` layers instead when the compiled kernel is
there (`biogpt.cpu.gemv`): it streams the weights in their ordinary layout faster than either
library's prepacked kernels (for one row 1.2-1.6x on the development machine,
`benchmarks/gemv.py`; beam search with 5 beams ran 1.11x faster in fp32 and 1.44x in bf16
than on oneDNN's and fbgemm's layers), so nothing is reordered, packing is immediate, and
the tied output projection multiplies by the token embedding itself instead of a packed
copy of it (174 MB less for the 347M model in fp32, 93 MB in bf16). A prompt of up to 8
tokens takes the kernel as well, in one pass over the weights: PyTorch's kernels read raw
weights for 2-8 rows at only 6-13 GB/s. More rows (a longer prompt) go to PyTorch's own
kernels on the same weights in those layers. `generate` packs for its rows (their number
up to 8, 16 for anything more), and a bf16 model packed for more than 8 rows keeps its
fbgemm layers for fewer too, since repacking would cost seconds.

`quantize_int8(model)` is the smaller sibling: every linear layer becomes an `Int8Linear`
holding int8 weights with one scale per output row. Decoding steps are weight-only: the
inputs stay fp32, the gemv kernel widens each int8 weight exactly and multiplies each
row's fp32 sum by its scale, so a step reads a quarter of fp32's bytes, at the same
bandwidth for one row. A prompt's tokens are multiplied in int8, each token's row rounded
to 8 bits with its own scale. The weights are rounded (by up to half a step, the row's
largest magnitude / 254) for good: `unpack` gives back fp32 layers with the dequantised
weights, and the tied output projection its exact embedding again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biogpt.cpu import gemv
from biogpt.errors import BioGPTError

# dtypes oneDNN runs fast on CPUs with AVX-512 (bf16 through AVX512-BF16 or AMX).
PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


HALF_DTYPES = (torch.bfloat16, torch.float16)  # what `HalfLinear` runs, where fbgemm is


def _has_fbgemm() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def can_pack(model: nn.Module) -> bool:
    """Whether `pack` would help: an eval-mode model on the CPU in fp32 or bf16, or in fp16
    where fbgemm runs."""
    weight = next(model.parameters(), None)
    if weight is None or weight.device.type != "cpu" or model.training:
        return False
    if weight.dtype in HALF_DTYPES and _has_fbgemm():
        return True
    return (
        weight.dtype in PACKABLE_DTYPES
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class _StandIn(nn.Module):
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


class PackedLinear(_StandIn):
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


class HalfLinear(_StandIn):
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
                self.exceptions.append(self._unholdable(w))
                fp32 = scratch.fp32_copy(w).clamp_(-65504.0, 65504.0)
                self.blocks.append(torch.ops.quantized.linear_prepack_fp16(fp32, b))

    @staticmethod
    def _unholdable(w: Tensor) -> tuple[Tensor, Tensor]:
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
        cls, linear: nn.Module, out_dtype: torch.dtype | None = None, scratch: Scratch | None = None
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


class GemvLinear(_StandIn):
    """`y = x W^T + b` holding W as it is (fp32 or bf16, row-major, not copied): up to
    `gemv.MAX_ROWS` rows go through the compiled gemv kernel (fp32 products, fp32 result;
    one pass over W for all of them), more rows through PyTorch's kernels. The result is in
    the input's dtype, or in `out_dtype` when one is given (the output projection of a bf16
    model gives fp32 logits, computed in fp32 for many rows too, a block of weights at a
    time). Inference only."""

    kind = "gemv kernel for up to 8 rows"
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
    def from_linear(cls, linear: nn.Module, out_dtype: torch.dtype | None = None) -> GemvLinear:
        return cls(linear.weight, linear.bias, out_dtype)

    def forward(self, x: Tensor) -> Tensor:
        out_dtype = self.out_dtype or x.dtype
        if 0 < x.numel() <= gemv.MAX_ROWS * self.in_features:
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


class _FusedQKV:
    """What a fused q/k/v layer shares, packed or int8: it stands in `qkv_proj` while
    `q_proj`, `k_proj` and `v_proj` are removed, and its state dict entries are still the
    three projections' own. Needs `dense_weight()`, `bias` and `out_features`."""

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


def _fused_qkv_weights(attention: nn.Module, scratch: Scratch) -> tuple[Tensor, Tensor]:
    """q, k and v of one attention layer as one [3H, H] weight (written into `scratch`) and
    one [3H] bias."""
    q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
    weight = scratch.tensor((3 * q.weight.shape[0], q.weight.shape[1]), q.weight.dtype)
    torch.cat([q.weight.detach(), k.weight.detach(), v.weight.detach()], out=weight)
    return weight, torch.cat([q.bias.detach(), k.bias.detach(), v.bias.detach()])


class PackedQKV(_FusedQKV, PackedLinear):
    """The q, k and v projections of one attention layer packed as one [3H, H] matrix."""


class HalfQKV(_FusedQKV, HalfLinear):
    """The q, k and v projections of one bf16 or fp16 attention layer as one fp16 [3H, H]
    matrix."""


class GemvQKV(_FusedQKV, GemvLinear):
    """The q, k and v projections of one attention layer as one [3H, H] matrix for the gemv
    kernel."""


@contextmanager
def _fbgemm() -> Iterator[None]:
    """PyTorch's quantised engine set to fbgemm (for prepacking) and restored afterwards."""
    if not _has_fbgemm():
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
_INT8_MATMUL = _has_vnni()
_TINY = torch.finfo(torch.float32).tiny  # the smallest scale: an all-zero row stays zero


def _symmetric_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each row of x (N, k) rounded to 8-bit steps of its largest magnitude / 127: the int8
    steps (N, k) and the scales (N,), in fp32."""
    scale = (x.abs().amax(dim=1) / 127).clamp_min(_TINY)
    steps = x / scale[:, None]  # the one fp32 temporary
    return steps.round_().clamp_(-127, 127).to(torch.int8), scale


class Int8Linear(_StandIn):
    """`y = x W^T + b` with W held in int8, one fp32 scale per output row (symmetric: the
    row's largest magnitude / 127). Inference only; the products are computed from fp32
    inputs and the result comes back in the input's dtype.

    One token per row (a decoding step: x of shape (N, in) or (N, 1, in), any N) is
    weight-only: the gemv kernel widens each weight exactly against the fp32 rows and
    multiplies each row's fp32 sum by its scale, one pass over the int8 weights (a quarter
    of fp32's bytes) for every 8 rows. The tokens of sequences (x of shape (..., T, in),
    T > 1: a prompt) are multiplied in int8 instead: each token's row is quantised to 8 bits
    with its own scale, the products summed exactly in int32 by PyTorch's int8 matmul
    (`torch._int_mm`, 8x fp32's speed here) and rescaled in fp32. So a row's result depends
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
    def from_linear(cls, linear: nn.Module) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).float()
        sequences = x.dim() >= 3 and x.shape[-2] > 1
        if flat.shape[0] == 0:
            y = flat.new_zeros(0, self.out_features)
        elif self.matrix is not None and not sequences:
            parts = [self.matrix(rows) for rows in flat.split(gemv.MAX_ROWS)]
            y = parts[0] if len(parts) == 1 else torch.cat(parts)
        elif _INT8_MATMUL:
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


class Int8QKV(_FusedQKV, Int8Linear):
    """The q, k and v projections of one attention layer as one int8 [3H, H] matrix."""


def _attention_layers(model: nn.Module) -> list[nn.Module]:
    """Modules that hold separate q/k/v projections and a `qkv_proj` slot for fusing them."""
    return [
        m
        for m in model.modules()
        if hasattr(m, "qkv_proj")
        and all(isinstance(getattr(m, n, None), nn.Linear) for n in PackedQKV.names)
    ]


def _linear_slots(model: nn.Module, kind: type | tuple[type, ...]) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute name) of every child layer of type `kind`.

    Only names are collected, not the layers, so that a replaced layer's weight is freed
    as soon as it is swapped out and memory never holds two copies of the model.
    """
    return [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, kind)
    ]


def _ordinary_tensors(fn):
    """Run `fn` with autograd off but outside inference mode, even when called inside it
    (`generate` packs the model under `torch.inference_mode`): the tensors it makes must
    be able to become trainable parameters again later, which inference tensors cannot."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def _takes_half_layers(model: nn.Module) -> bool:
    """Whether `model` is one that HalfLinear layers can run: bf16 or fp16, where fbgemm runs."""
    return next(model.parameters()).dtype in HALF_DTYPES and _has_fbgemm()


def _layout(model: nn.Module, rows: int) -> type:
    """The layer type `pack` gives `model` for `rows` input rows."""
    dtype = next(model.parameters()).dtype
    kernel = rows <= gemv.MAX_ROWS and gemv.available() and dtype in gemv.KERNEL_DTYPES
    if _takes_half_layers(model) and (not kernel or _has_layer(model, HalfLinear)):
        return HalfLinear  # for every row count once there: repacking costs seconds
    return GemvLinear if kernel else PackedLinear


def _has_layer(model: nn.Module, kind: type) -> bool:
    return any(isinstance(m, kind) for m in model.modules())


@_ordinary_tensors
def pack(model: nn.Module, rows: int = 1) -> None:
    """Make every nn.Linear of `model` fast for `rows` input rows (in place), fusing each
    attention layer's q, k and v: `GemvLinear` for up to `gemv.MAX_ROWS` rows of fp32 or
    bf16 where the compiled kernel runs; otherwise a `HalfLinear` in a bf16 or fp16 model
    (for any number of rows, kept once made), a `PackedLinear` in an fp32 one (reordered if
    packed for another count)."""
    kind = _layout(model, rows)
    if kind is not PackedLinear and _has_layer(model, kind):
        return  # one layout for every row count
    if not _has_layer(model, kind):
        unpack(model)  # plain layers to start from (a no-op unless packed some other way)
    head = getattr(model, "output_projection", None)
    logits = torch.float32  # the head's output dtype: fp32 logits whatever the weights
    if kind is GemvLinear:
        _replace_linears(
            model,
            lambda w, b, _: GemvQKV(w.clone(), b),  # `w` lies in the scratch buffer
            lambda linear, _: GemvLinear.from_linear(linear, logits if linear is head else None),
        )
    elif kind is HalfLinear:
        _replace_linears(
            model,
            lambda w, b, scratch: HalfQKV(w, b, scratch=scratch),
            lambda linear, scratch: HalfLinear.from_linear(
                linear, logits if linear is head else None, scratch
            ),
        )
    else:
        _replace_linears(model, lambda w, b, _: PackedQKV(w, b, rows),
                         lambda linear, _: PackedLinear.from_linear(linear, rows))  # fmt: skip
        for module in model.modules():
            if isinstance(module, PackedLinear):
                module.repack(rows)


@_ordinary_tensors
def quantize_int8(model: nn.Module) -> None:
    """Replace every nn.Linear of `model` by an Int8Linear (in place), fusing each attention
    layer's q, k and v. Layers packed for oneDNN are unpacked first."""
    unpack(model)
    _replace_linears(model, lambda w, b, _: Int8QKV(w, b),
                     lambda linear, _: Int8Linear.from_linear(linear))  # fmt: skip


def _release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system, where the C library can (glibc).

    Swapping a layer frees its old weight and the temporaries that built the new one, but
    the new long-lived weights land between those holes, which the allocator then keeps:
    packing the 347M model for the half kernel ended 300 MB above its size without this.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _find_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to call
        return None


_MALLOC_TRIM = _find_malloc_trim()


def _replace_linears(model: nn.Module, make_qkv, make_linear) -> None:
    """Swap q/k/v triples for `make_qkv(weight, bias, scratch)` and the other nn.Linear
    layers for `make_linear(layer, scratch)`, one layer at a time so that memory never
    holds two models, all building in one `Scratch`.

    (One layer at a time on one thread: fbgemm's packing would run side by side on
    several, 2.7 s instead of 4.1 s for the 347M model on 2 threads, but each thread's
    fp32 copy of a layer took the peak memory of bf16 decoding over its budget.)"""
    scratch = Scratch()
    for attention in _attention_layers(model):
        attention.qkv_proj = make_qkv(*_fused_qkv_weights(attention, scratch), scratch)
        for name in _FusedQKV.names:
            delattr(attention, name)
        _release_freed_memory()
    for parent, name in _linear_slots(model, nn.Linear):
        setattr(parent, name, make_linear(getattr(parent, name), scratch))
        _release_freed_memory()


@_ordinary_tensors
def unpack(model: nn.Module) -> None:
    """Restore plain nn.Linear layers (in place), from packed or int8 ones; ties the head
    again where it was tied."""
    slots = _linear_slots(model, _StandIn)
    for parent, name in slots:
        layer = getattr(parent, name)
        if isinstance(layer, _FusedQKV):
            for part, linear in layer.split().items():
                setattr(parent, part, linear)
            setattr(parent, name, None)
        else:
            setattr(parent, name, layer.to_linear())
    if slots and hasattr(model, "tie_weights"):
        model.tie_weights()


def is_packed(model: nn.Module) -> bool:
    return any(isinstance(m, PackedLinear | HalfLinear | GemvLinear) for m in model.modules())


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
