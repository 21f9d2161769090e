"""How much of a CPU decoding step is spent outside the matrix products.

Times one cached decoding step of the model (packed as `generate` packs it) against the
same packed linear layers run back to back on inputs of the right shapes, in alternating
rounds, and prints the share of the step that the products do not account for: attention,
GELU, layer norms, residual adds, cache writes and Python dispatch.

    python benchmarks/decode_overhead.py [--preset biogpt] [--dtype fp32] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from biogpt.config import ModelConfig
from biogpt.model import BioGPT
from biogpt.packing import _StandIn

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
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="steps timed per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.set_default_dtype(DTYPES[args.dtype])
    model = BioGPT(ModelConfig.from_name(args.preset)).eval()
    model.pack(1)
    layers = [m for m in model.modules() if isinstance(m, _StandIn)]
    inputs = [torch.randn(1, 1, layer.in_features) for layer in layers]
    prompt = torch.tensor([[2, 4805, 9, 656, 21]])
    token = torch.tensor([[5]])

    with torch.inference_mode():
        cache = model.new_cache(1, 64)
        model(prompt, cache=cache)

        def step() -> None:
            model(token, cache=cache)
            cache.length, cache.seen[:] = prompt.shape[1], prompt.shape[1]  # same length each time

        def products() -> None:
            for layer, x in zip(layers, inputs, strict=True):
                layer(x)

        step(), products()  # warm-up
        steps, alone = [], []
        for _ in range(args.rounds):
            steps.append(mean_time(step, args.steps))
            alone.append(mean_time(products, args.steps))
    full, bare = min(steps), min(alone)
    print(
        f"{args.preset} {args.dtype}, {args.threads} threads, {len(layers)} linear layers: "
        f"step {full * 1e3:.1f} ms, its products alone {bare * 1e3:.1f} ms, "
        f"outside the products {100 * (full - bare) / full:.1f}% of the step"
    )


if __name__ == "__main__":
    main()
