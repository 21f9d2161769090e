"""One row times a weight matrix on the CPU, at memory speed: the product decoding is made of.

A decoding step of batch 1 multiplies one row by every weight matrix of the model, so it
takes as long as the weights take to stream from memory. `gemv` runs the compiled kernel
`biogpt._gemv` (biogpt/_gemv.c), which reads the weights in their ordinary row-major layout
faster than PyTorch's kernels do (48-58 GB/s against oneDNN's 37-43 for prepacked fp32
weights, 2 threads, AVX-512), so nothing has to be reordered or copied: the tied output
projection multiplies by the token embedding itself. fp32 and bf16 weights are supported;
the result is fp32, and the products and sums are fp32 ones (a bf16 weight is widened
exactly; a bf16 row against bf16 weights, a bf16 model's case, is multiplied in pairs by
AVX512-BF16's dot-product instruction, exactly, where the CPU has it).

The kernel is optional: it is built when the package is installed on x86-64 with a C
compiler, and runs on CPUs with AVX-512. `available()` says whether it is there.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    from biogpt import _gemv
except ImportError:  # not built (no compiler, not x86-64): the PyTorch kernels are used
    _gemv = None

KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # weight dtypes the kernel reads

_SUPPORTED = _gemv is not None and _gemv.supported()
# bf16 weights times a bf16 row with AVX512-BF16's pair products (what a bf16 model feeds)
_BF16_DOT = _SUPPORTED and _gemv.bf16_dot()


def available() -> bool:
    """Whether the compiled kernel is built and this CPU runs it."""
    return _SUPPORTED


def gemv(weight: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
    """`weight @ x + bias` for one row `x` (in_features,) against a contiguous CPU `weight`
    (out_features, in_features) in fp32 or bf16 and an optional fp32 `bias`: an fp32
    vector (out_features,), on `torch.get_num_threads()` threads. A bf16 `x` against bf16
    weights is multiplied as it is (exact products); any other `x` is taken in fp32."""
    if not _SUPPORTED:
        raise RuntimeError("the compiled gemv kernel is not available (see biogpt.gemv)")
    n, k = weight.shape
    if weight.dtype not in KERNEL_DTYPES or weight.device.type != "cpu":
        raise ValueError(
            f"gemv takes a CPU fp32 or bf16 weight, not {weight.dtype} on {weight.device}"
        )
    if not weight.is_contiguous():
        raise ValueError("gemv needs a contiguous (row-major) weight")
    bf16 = weight.dtype == torch.bfloat16
    kind = 2 if bf16 and x.dtype == torch.bfloat16 and _BF16_DOT else int(bf16)
    x = x.reshape(-1).to(torch.bfloat16 if kind == 2 else torch.float32).contiguous()
    if x.numel() != k:
        raise ValueError(f"gemv: x has {x.numel()} elements, the weight {k} columns")
    if bias is not None:
        bias = bias.to(torch.float32).contiguous()
        if bias.numel() != n:
            raise ValueError(f"gemv: bias has {bias.numel()} elements, the weight {n} rows")
    y = torch.empty(n, dtype=torch.float32)
    _gemv.gemv(
        weight.data_ptr(),
        x.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        y.data_ptr(),
        n,
        k,
        torch.get_num_threads(),
        kind,
    )
    return y
