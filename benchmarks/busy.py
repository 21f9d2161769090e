"""Decoding on a quiet and on a busy machine: the thread count the step chooses for itself
against every fixed count, in one process.

A decoding step's threads meet at barriers a few hundred times a step, so a thread that
shares its core with another process stalls the others (see biogpt/cpu/threads.py). This
script decodes greedily at batch 1 with the 347M shape (random weights), each contender in
turn, for a few rounds: first on a quiet machine, then with one process spinning on one
core (what a server's own threads, or any neighbour, do to a step). It prints each
contender's median new tokens per second and the ratio of the default (adaptive) to the
best fixed count, which the package aims to keep at 0.85 or more.

    python benchmarks/busy.py [--tokens 64] [--rounds 3] [--preset biogpt] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from machine import cpu_model, one_core_busy

from biogpt import BioGPT
from biogpt.config import ModelConfig
from biogpt.cpu import threads as thread_choice

PROMPT = [2, 4805, 9, 656, 21]  # "COVID-19 is"


def run_with(model: BioGPT, tokens: int, count: int | None) -> float:
    """New tokens per second of one greedy run: on `count` fixed threads, or adaptive (None)
    with every thread at hand."""
    most = os.cpu_count() or 1
    os.environ[thread_choice.ENVIRONMENT] = "adaptive" if count is None else "fixed"
    torch.set_num_threads(most if count is None else count)
    ids = torch.tensor([[t % model.config.vocab_size for t in PROMPT]])
    began = time.perf_counter()
    out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens)
    seconds = time.perf_counter() - began
    assert out.shape[1] == ids.shape[1] + tokens
    return tokens / seconds


def measure(
    contenders: dict[str, int | None], rounds: int, run: Callable[[int | None], float]
) -> dict[str, list[float]]:
    """Each contender once per round, in turn: a slow moment of the machine hits all."""
    speeds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, count in contenders.items():
            speeds[name].append(run(count))
    return speeds


def report(title: str, speeds: dict[str, list[float]]) -> float:
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    best_fixed = max(v for name, v in medians.items() if name != "adaptive")
    print(f"\n{title}")
    print(f"{'contender':<22}{'tok/s (median)':>16}{'runs':>40}")
    for name, values in speeds.items():
        runs = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:<22}{medians[name]:>16.2f}{runs:>40}")
    ratio = medians["adaptive"] / best_fixed
    print(f"adaptive / best fixed count: {ratio:.2f}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each contender")
    parser.add_argument("--preset", default="biogpt", help="model shape (default: biogpt, 347M)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()

    most = os.cpu_count() or 1
    config = ModelConfig.from_name(args.preset)
    torch.manual_seed(0)
    model = BioGPT(config).eval()
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    contenders: dict[str, int | None] = {
        f"{count} thread{'s' if count > 1 else ''} (fixed)": count
        for count in thread_choice.candidates(most)
    }
    contenders["adaptive"] = None
    print(f"CPU: {cpu_model()}, {most} cores; torch {torch.__version__}")
    print(f"model: {args.preset} ({config.num_parameters() / 1e6:.0f}M), {args.dtype}, greedy, ")
    print(f"batch 1, {args.tokens} new tokens, {args.rounds} rounds")

    def run(count: int | None) -> float:
        return run_with(model, args.tokens, count)

    run(None)  # warm up: packing, first-touch of the weights
    quiet = report("quiet machine", measure(contenders, args.rounds, run))
    with one_core_busy():
        busy = report(
            "busy machine: one process spinning on one core",
            measure(contenders, args.rounds, run),
        )
    chooser = thread_choice.chooser_for(model, most)
    used = getattr(chooser, "used", {})
    print(f"\nadaptive steps on each count, all runs: {dict(sorted(used.items()))}")
    print(f"\nsummary: adaptive keeps {quiet:.2f} (quiet) and {busy:.2f} (busy) of the best count")


if __name__ == "__main__":
    main()
