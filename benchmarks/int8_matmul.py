"""Does int8 pay on this CPU? One decoding-shaped matmul, four ways.

Decoding multiplies one row by each weight matrix, so the bytes of the weights set the
speed. int8 weights are 4x smaller than fp32 and 2x smaller than bf16, so an int8 kernel
that streamed at the same bandwidth would be 2x faster than bf16. This measures two int8
kernels PyTorch ships for CPU against the oneDNN-prepacked fp32 and bf16 matmuls the
decoder uses, on the shapes of the 347M model, and prints effective bandwidth and time per
call: the weight-only one (`aten::_weight_int8pack_mm`, bf16 activations) and the one
`biogpt.packing.Int8Linear` uses (dynamic quantisation on fbgemm: the activations are
quantised to 8 bits per call).

    python benchmarks/int8_matmul.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from biogpt.packing import Int8Linear


def per_call(fn, weights: list, calls: int = 5) -> float:
    for w in weights[:2]:
        fn(w)
    began = time.perf_counter()
    for _ in range(calls):
        for w in weights:
            fn(w)
    return (time.perf_counter() - began) / (calls * len(weights))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'shape':>12} {'kind':>8} {'us/call':>9} {'GB/s':>7} {'x vs bf16':>10}")
    for n, k in ((3072, 1024), (4096, 1024), (1024, 4096)):
        # Enough distinct matrices (about 300 MB) that none stays in cache between calls.
        count = max(2, int(300e6 // (n * k * 4)))
        dense = [torch.randn(n, k) * 0.02 for _ in range(count)]
        results = {}
        for dtype in (torch.float32, torch.bfloat16):
            packed = [torch.ops.mkldnn._reorder_linear_weight(w.to(dtype), 1) for w in dense]
            x = torch.randn(1, k, dtype=dtype)
            bias = torch.zeros(n, dtype=dtype)
            seconds = per_call(
                lambda w, x=x, b=bias: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
                packed,
            )
            results[str(dtype).split(".")[1]] = (seconds, n * k * dtype.itemsize)
        scales = [w.abs().amax(dim=1) / 127 for w in dense]
        quantised = [
            (torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8), s.to(torch.bfloat16))
            for w, s in zip(dense, scales, strict=True)
        ]
        x = torch.randn(1, k, dtype=torch.bfloat16)
        seconds = per_call(
            lambda q, x=x: torch.ops.aten._weight_int8pack_mm(x, q[0], q[1]), quantised
        )
        results["int8 w"] = (seconds, n * k)
        layers = [Int8Linear(w, None) for w in dense]
        x = torch.randn(1, k)
        results["int8 dyn"] = (per_call(lambda layer, x=x: layer(x), layers), n * k)
        bf16 = results["bfloat16"][0]
        for kind, (seconds, size) in results.items():
            print(
                f"{n:>6}x{k:<5} {kind[:8]:>8} {seconds * 1e6:>9.0f} {size / seconds / 1e9:>7.1f}"
                f" {bf16 / seconds:>9.2f}x"
            )


if __name__ == "__main__":
    main()
