"""How much of a CPU decoding step is spent outside the matrix products.

Times one cached decoding step of the model (packed as `generate` packs it), op by op from
Python and, where the kernel is built, as the one compiled call `generate` makes
(`biogpt.cpu.fused`), against the same packed linear layers run back to back on inputs of the
right shapes, in alternating rounds, and prints the share of each step that the products
do not account for: attention, GELU, layer norms, residual adds, cache writes and Python
dispatch. (The products alone still pay one Python call per layer, so a step that costs
next to nothing besides them can come out slightly below 0%.)

    python benchmarks/decode_overhead.py [--preset biogpt] [--dtype fp32] [--threads 2] [--rows 1]

(--rows 5 times a step of beam search's five beams: the same, for five rows at once.)
"""

from __future__ import annotations

import argparse
import time

import torch

from biogpt import BioGPT, cpu
from biogpt.config import ModelConfig
from biogpt.cpu.fused import FusedStep
from biogpt.cpu.layers import InferenceLinear

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def mean_time(fn, calls: int) -> float:
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="biogpt")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8, help="steps timed per round")
    parser.add_argument("--rows", type=int, default=1, help="rows decoded together (1 to 8)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.set_default_dtype(DTYPES[args.dtype])
    model = BioGPT(ModelConfig.from_name(args.preset)).eval()
    rows = args.rows
    cpu.prepare(model, rows)
    layers = [m for m in model.modules() if isinstance(m, InferenceLinear)]
    inputs = [torch.randn(rows, 1, layer.in_features) for layer in layers]
    prompt = torch.tensor([[2, 4805, 9, 656, 21]]).repeat(rows, 1)
    token = torch.full((rows, 1), 5)

    with torch.inference_mode():
        cache = model.new_cache(rows, 64)
        model(prompt, cache=cache)

        fused = FusedStep.build(model)

        def rewind() -> None:
            cache.length, cache.seen[:] = prompt.shape[1], prompt.shape[1]  # same length each time

        def op_by_op() -> None:
            model(token, cache=cache)
            rewind()

        def one_call() -> None:
            fused(token[:, 0], cache)
            rewind()

        def products() -> None:
            for layer, x in zip(layers, inputs, strict=True):
                layer(x)

        contenders = {"op-by-op step": op_by_op, "products alone": products}
        if fused is not None:
            contenders["fused step"] = one_call
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for fn in contenders.values():
            fn()  # warm-up
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                times[name].append(mean_time(fn, args.steps))
    best = {name: min(t) for name, t in times.items()}
    bare = best.pop("products alone")
    print(
        f"{args.preset} {args.dtype}, {args.threads} threads, {rows} row(s), "
        f"{len(layers)} linear layers: "
        f"products alone {bare * 1e3:.1f} ms"
    )
    for name, full in best.items():
        print(
            f"  {name}: {full * 1e3:.1f} ms, outside the products "
            f"{100 * (full - bare) / full:.1f}% of the step"
        )
    if fused is None:
        print("  (no fused step: it needs fp32, or bf16 with AVX512-BF16, and the kernel)")


if __name__ == "__main__":
    main()
