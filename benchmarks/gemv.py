"""The one-row kernel against PyTorch's CPU kernels, on the 347M model's matrix shapes.

For each shape, one row times the matrix: the compiled gemv kernel (`biogpt.cpu.gemv`) against
oneDNN's kernel on weights prepacked for one row (what fp32 decoding used before) in fp32,
and against fbgemm's fp16-weight kernel (`HalfLinear`) in bf16, with `torch.sum` over the
same bytes as the plain streaming rate. Several copies of each matrix are cycled through so
that none is read from the cache. Prints GB/s of weights read and the kernel's ratio.

Then several rows at once, on the 4096x1024 shape: a step's rows (up to 8) and a short
prompt's tokens (up to 64, in fp32): the kernel's one pass over the weights for all of them
against PyTorch's F.linear on the same raw weights (what a prompt takes past the kernel's
rows) and oneDNN on weights prepacked for that many rows (the layout batches of more than
8 rows take).

    python benchmarks/gemv.py [--threads 2] [--megabytes 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from biogpt.cpu import gemv
from biogpt.cpu.layers import HalfLinear

SHAPES = [(3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096), (42384, 1024)]  # qkv..head


def rates(contenders: dict, nbytes: int, rounds: int = 7) -> dict[str, float]:
    """Median GB/s of each contender, `name: (fn, copies)`, over `rounds` passes of `fn` over
    every copy, the contenders taking turns within each round (the machine's bandwidth
    drifts: side by side, they see the same moments)."""
    for fn, copies in contenders.values():
        for c in copies:
            fn(c)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (fn, copies) in contenders.items():
            began = time.perf_counter()
            for c in copies:
                fn(c)
            times[name].append((time.perf_counter() - began) / len(copies))
    return {name: nbytes / statistics.median(t) / 1e9 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--megabytes", type=int, default=256, help="fp32 bytes cycled per shape")
    args = parser.parse_args()
    if not gemv.available():
        raise SystemExit("the gemv kernel is not built here (see biogpt/cpu/gemv.py)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lp = torch.ops.mkldnn._linear_pointwise
    print(f"{args.threads} threads; GB/s of weights read for one row (median of 7 passes)")
    print(
        f"{'shape':>13} | {'fp32 sum':>8} {'oneDNN':>7} {'gemv':>6} {'ratio':>6} | "
        f"{'bf16 sum':>8} {'fbgemm':>7} {'gemv':>6} {'ratio':>6}"
    )
    for n, k in SHAPES:
        count = max(2, args.megabytes * 2**20 // (n * k * 4))
        dense = [torch.randn(n, k) * 0.02 for _ in range(count)]
        bias = torch.randn(n)
        x = torch.randn(1, k)
        fp32 = rates(
            {
                "sum": (torch.sum, dense),
                "onednn": (
                    lambda p, x=x, bias=bias: lp(x, p, bias, "none", [], ""),
                    [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in dense],
                ),
                "gemv": (lambda m, x=x: m(x), [gemv.Matrix(w, bias) for w in dense]),
            },
            n * k * 4,
        )
        half = [w.bfloat16() for w in dense]
        del dense
        xb = x.bfloat16()
        bf16 = rates(
            {
                "sum": (torch.sum, half),
                "fbgemm": (lambda h, xb=xb: h(xb), [HalfLinear(w, bias.bfloat16()) for w in half]),
                "gemv": (lambda m, xb=xb: m(xb), [gemv.Matrix(w, bias) for w in half]),
            },
            n * k * 2,
        )
        print(
            f"{f'{n}x{k}':>13} | {fp32['sum']:>8.1f} {fp32['onednn']:>7.1f} {fp32['gemv']:>6.1f} "
            f"{fp32['gemv'] / fp32['onednn']:>5.2f}x | {bf16['sum']:>8.1f} {bf16['fbgemm']:>7.1f} "
            f"{bf16['gemv']:>6.1f} {bf16['gemv'] / bf16['fbgemm']:>5.2f}x"
        )
    several_rows(args.megabytes, lp)


def several_rows(megabytes: int, lp) -> None:
    n, k = 4096, 1024
    count = max(2, megabytes * 2**20 // (n * k * 4))
    dense = [torch.randn(n, k) * 0.02 for _ in range(count)]
    bias = torch.randn(n)
    matrices = [gemv.Matrix(w, bias) for w in dense]
    print(f"\nfp32 {n}x{k}, several rows at once; GB/s of weights read per call")
    print(
        f"{'rows':>5} {'F.linear':>9} {'oneDNN':>7} {'gemv':>6} {'vs F.linear':>12} {'vs oneDNN':>10}"
    )
    for m in (1, 2, 3, 5, 8, 12, 16, 32, 64):
        x = torch.randn(m, k)
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, m) for w in dense]
        got = rates(
            {
                "plain": (lambda w, x=x: torch.nn.functional.linear(x, w, bias), dense),
                "onednn": (lambda p, x=x: lp(x, p, bias, "none", [], ""), packed),
                "ours": (lambda mat, x=x: mat(x), matrices),
            },
            n * k * 4,
        )
        del packed
        plain, onednn, ours = got["plain"], got["onednn"], got["ours"]
        print(
            f"{m:>5} {plain:>9.1f} {onednn:>7.1f} {ours:>6.1f} {ours / plain:>11.2f}x "
            f"{ours / onednn:>9.2f}x"
        )


if __name__ == "__main__":
    main()
