"""Decoding speed on a GPU: transformers' generate() against this package, eager and with the
compiled fixed-shape step (`compile_step=True`: torch.compile, CUDA graphs), in one run.

The full 347M BioGPT shape with random weights, bf16, SDPA attention, new tokens forced with
min_new_tokens so that every run has the same length. Greedy decoding at batch 1 (where a
GPU step is launch-bound) and at a larger batch. Prints new tokens per second, the ratios,
the compile time of the first call, and whether the compiled step chose the same tokens as
the eager one (bf16 kernels fused differently may round differently, so this is reported,
not asserted).

    python benchmarks/generate_gpu.py [--tokens 128] [--batch 8] [--preset biogpt]
    python benchmarks/generate_gpu.py --device cpu --preset tiny --tokens 8   # a smoke run
"""

from __future__ import annotations

import argparse
import time

import torch

from biogpt import BioGPT
from biogpt.config import ModelConfig

PROMPT = [2, 4805, 9, 656, 21]  # "COVID-19 is"


def timed(fn, device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall time of `repeats` calls of `fn` (synchronised), and its last output."""
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - began)
    return best, out


def race(ours: BioGPT, hf, batch: int, n: int, repeats: int, device: torch.device) -> None:
    """Time greedy decoding of `batch` prompts, n new tokens each, and print one table row."""
    vocab = ours.config.vocab_size
    prompt = torch.tensor([[t % vocab for t in PROMPT]] * batch, device=device)
    fixed = dict(max_new_tokens=n, min_new_tokens=n)

    def eager():
        return ours.generate(prompt, **fixed)

    def compiled():
        return ours.generate(prompt, compile_step=True, **fixed)

    def hf_run():
        with torch.inference_mode():
            return hf.generate(
                prompt, attention_mask=torch.ones_like(prompt), do_sample=False, pad_token_id=1,
                **fixed,
            )  # fmt: skip

    began = time.perf_counter()
    compiled()  # the first call compiles (once per batch size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    compile_seconds = time.perf_counter() - began
    eager()  # warm-up
    t_eager, out_eager = timed(eager, device, repeats)
    t_compiled, out_compiled = timed(compiled, device, repeats)
    hf_tps = float("nan")
    if hf is not None:
        hf_run()
        hf_tps = batch * n / timed(hf_run, device, repeats)[0]
    same = float((out_eager == out_compiled).float().mean())
    e_tps, c_tps = batch * n / t_eager, batch * n / t_compiled
    print(
        f"{batch:>5} {hf_tps:>9.1f} {e_tps:>9.1f} {c_tps:>9.1f} {e_tps / hf_tps:>8.2f}x "
        f"{c_tps / hf_tps:>7.2f}x {c_tps / e_tps:>10.2f}x {compile_seconds:>10.1f} "
        f"{100 * same:>11.1f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="biogpt")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per run")
    parser.add_argument("--batch", type=int, default=8, help="the larger batch size timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here (use --device cpu for a smoke run)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    ours = BioGPT(ModelConfig.from_name(args.preset)).eval().to(device=device, dtype=dtype)
    hf = None
    if not args.skip_hf:
        from oracle import hf_twin

        hf = hf_twin(ours).to(dtype)
    n = args.tokens
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.preset} in {dtype}, {name}, {n} new tokens per run, best of {args.repeats}")
    print(f"{'batch':>5} {'HF tok/s':>9} {'eager':>9} {'compiled':>9} {'eager/HF':>9} "
          f"{'comp/HF':>8} {'comp/eager':>11} {'compile s':>10} {'same tokens':>12}")  # fmt: skip
    for batch in (1, args.batch):
        race(ours, hf, batch, n, args.repeats, device)
    print("(new tokens per second over the batch, prefill included)")


if __name__ == "__main__":
    main()
