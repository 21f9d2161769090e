"""int8 products on this CPU: this package's weight-only layer against PyTorch's int8 kernels.

Decoding multiplies a few rows by each weight matrix, so the bytes of the weights set the
speed: int8 weights are 4x smaller than fp32 and 2x smaller than bf16. On the shapes of the
347M model, for 1 row (greedy decoding), 5 (beam search) and 64 (a prompt), this times:
- `Int8Linear`, what `quantize_int8` gives: int8 weights widened exactly against fp32 rows
  by the gemv kernel, 8 rows a pass (weight-only: only the weights are rounded);
- PyTorch's dynamic quantisation on fbgemm (`quantized::linear_dynamic`, what this package
  used before): the rows are quantised to 8 bits per call and multiplied in int8 (VNNI);
- PyTorch's weight-only kernel (`aten::_weight_int8pack_mm`, bf16 rows);
- this package's bf16 layer (`GemvLinear` on bf16 weights and rows), for scale.
The contenders take turns over distinct matrices (about 300 MB of fp32, so that none stays
in cache); the table gives the median of the rounds, in microseconds per call and GB/s of
int8 weights read, and each one's speed relative to the bf16 layer.

    python benchmarks/int8_matmul.py [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from biogpt.cpu import gemv
from biogpt.cpu.layers import GemvLinear, Int8Linear

SHAPES = ((3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096))


def per_call(fn, operands: list) -> float:
    """Seconds per call of fn over every operand in turn."""
    began = time.perf_counter()
    for operand in operands:
        fn(operand)
    return (time.perf_counter() - began) / len(operands)


def fbgemm_dynamic(weight: torch.Tensor):
    """The prepacked weight of PyTorch's dynamic int8 linear (per-row scales)."""
    scales = (weight.abs().amax(dim=1) / 127).double()
    zeros = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # PyTorch marks its quantised-tensor API deprecated
        warnings.simplefilter("ignore")
        quantised = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
    torch.backends.quantized.engine = "fbgemm"
    return torch.ops.quantized.linear_prepack(quantised, None)


def contenders(dense: list[torch.Tensor], rows: int) -> dict[str, tuple]:
    """name -> (call, operands, input) for one shape and row count."""
    k = dense[0].shape[1]
    x = torch.randn(rows, k)
    half = x.bfloat16()
    ours = [Int8Linear(w, None) for w in dense]
    packs = [fbgemm_dynamic(w) for w in dense]
    weight_only = []
    for layer in ours:
        weight_only.append((layer.weight, layer.scale.bfloat16()))
    bf16 = [GemvLinear(w.bfloat16(), None) for w in dense]
    return {
        "int8 ours": (lambda layer: layer(x), ours),
        "fbgemm dyn": (lambda p: torch.ops.quantized.linear_dynamic(x, p, False), packs),
        "aten w8": (lambda q: torch.ops.aten._weight_int8pack_mm(half, q[0], q[1]), weight_only),
        "bf16 ours": (lambda layer: layer(half), bf16),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not gemv.available():
        raise SystemExit("the gemv kernel is not built or this CPU lacks AVX-512")
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads; median of {args.rounds} rounds, contenders taking turns")
    print(f"{'shape':>11} {'rows':>4} {'kind':>10} {'us/call':>9} {'int8 GB/s':>9} {'vs bf16':>8}")
    for n, k in SHAPES:
        dense = [torch.randn(n, k) * 0.02 for _ in range(max(2, int(300e6 // (n * k * 4))))]
        for rows in (1, 5, 64):
            runs = contenders(dense, rows)
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(args.rounds + 1):  # the first round warms up
                for name, (fn, operands) in runs.items():
                    times[name].append(per_call(fn, operands))
            median = {name: statistics.median(t[1:]) for name, t in times.items()}
            for name, seconds in median.items():
                print(
                    f"{n:>5}x{k:<5} {rows:>4} {name:>10} {seconds * 1e6:>9.0f} "
                    f"{n * k / seconds / 1e9:>9.1f} {median['bf16 ours'] / seconds:>7.2f}x"
                )


if __name__ == "__main__":
    main()
