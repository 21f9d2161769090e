"""A few rows times a weight matrix on the CPU: the product decoding is made of. One to
eight rows (a step's) go at memory speed; up to 64 rows of fp32 (a short prompt's tokens) in
one pass over the weights, where the multiply-adds set the pace.

A decoding step of batch 1 multiplies one row by every weight matrix of the model, so it
takes as long as the weights take to stream from memory. `gemv` runs the compiled kernel
`biogpt.cpu._cpu` (biogpt/cpu/products.h), which reads the weights in their ordinary row-major layout
faster than PyTorch's kernels do (`benchmarks/gemv.py` races it against oneDNN's and
fbgemm's, shape by shape), so nothing has to be reordered or copied: the tied output
projection multiplies by the token embedding itself. fp32, bf16 and int8 weights (with one
scale per row: `Matrix(weight, bias, scale=...)`) are supported; the result is fp32, and
the products and sums are fp32 ones (a bf16 or int8 weight is widened exactly, and an int8
row's sum is multiplied by its scale; a bf16 row against bf16 weights, a bf16 model's case,
is multiplied in pairs by AVX512-BF16's dot-product instruction, exactly, where the CPU has
it).

The kernel is optional: it is built when the package is installed on x86-64 with a C
compiler, and runs on CPUs with AVX-512. `available()` says whether it is there.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    from biogpt.cpu import _cpu
except ImportError:  # not built (no compiler, not x86-64): the PyTorch kernels are used
    _cpu = None  # type: ignore[assignment]

KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # weight dtypes the kernel reads unscaled
MAX_ROWS = 8  # rows of x one call takes: a step's rows, or a prompt of a few tokens
# rows of fp32 x one call takes against fp32 weights: a short prompt's tokens, in one pass over
# the weights (the kernel serves them six at a time over each group of weight rows it reads)
MAX_FP32_ROWS = 64

_SUPPORTED = _cpu is not None and _cpu.supported()
# bf16 weights times a bf16 row with AVX512-BF16's pair products (what a bf16 model feeds)
_BF16_DOT = _SUPPORTED and _cpu.bf16_dot()


def available() -> bool:
    """Whether the compiled kernel is built and this CPU runs it."""
    return _SUPPORTED


def bf16_dot() -> bool:
    """Whether the kernel multiplies a bf16 row by bf16 weights in pairs (AVX512-BF16)."""
    return _BF16_DOT


class Matrix:
    """A weight matrix ready for the kernel: checked once, so that each product costs little
    more than the kernel call (decoding makes about a hundred a step).

    `weight` (out_features, in_features) is a contiguous CPU tensor in fp32 or bf16, or in
    int8 with `scale` (out_features,), each row's factor; it is held as it is (not copied).
    `bias` and `scale` are kept in fp32 (a copy only if they are not)."""

    def __init__(
        self, weight: Tensor, bias: Tensor | None = None, scale: Tensor | None = None
    ) -> None:
        if not _SUPPORTED:
            raise RuntimeError("the compiled gemv kernel is not available (see biogpt.cpu.gemv)")
        int8 = weight.dtype == torch.int8
        if weight.dim() != 2 or not (int8 or weight.dtype in KERNEL_DTYPES):
            raise ValueError(f"gemv takes a 2-D fp32, bf16 or int8 weight, not {weight.dtype}")
        if weight.device.type != "cpu" or not weight.is_contiguous():
            raise ValueError("gemv needs a contiguous (row-major) CPU weight")
        if int8 != (scale is not None):
            raise ValueError("gemv: an int8 weight needs a scale per row, and only it takes one")
        self.weight = weight
        self.rows, self.columns = weight.shape
        self.bias, self.scale = (
            None if v is None else v.detach().to(torch.float32).contiguous() for v in (bias, scale)
        )
        for name, v in (("bias", self.bias), ("scale", self.scale)):
            if v is not None and v.numel() != self.rows:
                raise ValueError(
                    f"gemv: {name} has {v.numel()} elements, the weight {self.rows} rows"
                )
        # What the kernel is told the weight and the row hold (see products.h): 0 fp32 and fp32,
        # 1 bf16 and fp32, 2 bf16 and bf16 (a bf16 row is taken as it is only with bf16
        # dots), 3 int8 and fp32.
        self.bf16 = weight.dtype == torch.bfloat16
        self.kind = 3 if int8 else int(self.bf16)

    @property
    def max_rows(self) -> int:
        """Rows of x one call takes: MAX_FP32_ROWS for fp32 weights, MAX_ROWS otherwise."""
        return MAX_FP32_ROWS if self.kind == 0 else MAX_ROWS

    def __call__(self, x: Tensor) -> Tensor:
        """`x @ weight.T + bias` for 1 to `max_rows` rows `x` (..., columns): fp32
        (..., rows). One pass over the weights serves every row, and each row's result is
        the one it gets alone."""
        if x.dim() == 0 or x.shape[-1] != self.columns:
            raise ValueError(
                f"gemv: x has shape {tuple(x.shape)}, the weight {self.columns} columns"
            )
        m = x.numel() // self.columns
        if not 1 <= m <= self.max_rows:
            raise ValueError(f"gemv: x has {m} rows; the kernel takes 1 to {self.max_rows}")
        kind = 2 if self.bf16 and _BF16_DOT and x.dtype == torch.bfloat16 else self.kind
        rows = x.reshape(m, self.columns)
        if kind != 2 and rows.dtype != torch.float32:
            rows = rows.float()
        rows = rows.contiguous()
        y = torch.empty(*x.shape[:-1], self.rows, dtype=torch.float32)
        # Addresses are taken at every call, never kept: a copy of the layer (copy.deepcopy)
        # holds tensors of its own, and the originals may be gone.
        scale, bias = (0 if v is None else v.data_ptr() for v in (self.scale, self.bias))
        _cpu.gemv(
            self.weight.data_ptr(),
            scale,
            rows.data_ptr(),
            bias,
            y.data_ptr(),
            m,
            self.rows,
            self.columns,
            torch.get_num_threads(),
            kind,
        )
        return y


def gemv(
    weight: Tensor, x: Tensor, bias: Tensor | None = None, scale: Tensor | None = None
) -> Tensor:
    """`x @ weight.T + bias` for one row `x` (in_features,), or up to MAX_ROWS rows (...,
    in_features) (MAX_FP32_ROWS against fp32 weights), against a contiguous CPU `weight`
    (out_features, in_features) in fp32 or bf16, or in int8 with `scale` (out_features,) (each
    row's sum is multiplied by its scale), and an optional `bias`: fp32 (..., out_features), on
    `torch.get_num_threads()` threads. A bf16 `x` against bf16 weights is multiplied as it is
    (exact products); any other `x` is taken in fp32. (For many products with one matrix, build
    a `Matrix` once.)"""
    return Matrix(weight, bias, scale)(x)
