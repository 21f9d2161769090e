"""Decoding speed on CPU: this package against transformers' generate(), in one run.

The full 347M BioGPT shape with random weights (the released weights are not needed for
speed). Every run is forced to the same length with min_new_tokens = max_new_tokens.
Reports new tokens per second for greedy (batch 1) and beam search (5 beams), fp32, bf16
and int8 (int8 weights), the memory-bandwidth roofline (weight bytes read per step /
measured bandwidth), top-1 agreement of bf16 and int8 with fp32, and peak memory of our fp32 and
bf16 greedy runs in fresh processes.

    python benchmarks/generate.py [--tokens 64] [--threads 2] [--preset biogpt]
        [--dtypes fp32,bf16,int8] [--fixed-threads] [--busy]

`--fixed-threads` adds fp32 contenders pinned to each candidate thread count (this package
at its default chooses its count from measured step times, biogpt/cpu/threads.py; the
pinned ones take BIOGPT_THREADS=fixed) and transformers on each count, and prints how
close the default comes to the best count. `--busy` runs everything with one other process
spinning on one core, as a user's busy machine (or a server's own threads) would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch
from machine import cpu_model, one_core_busy

from biogpt import BioGPT, cpu
from biogpt.config import ModelConfig
from biogpt.cpu import gemv
from biogpt.cpu import threads as thread_choice

PROMPT = [2, 4805, 9, 656, 21]  # "COVID-19 is"


def prompt_for(config: ModelConfig) -> torch.Tensor:
    """The prompt, its ids folded into a smaller preset's vocabulary (for quick runs)."""
    return torch.tensor([[t % config.vocab_size for t in PROMPT]])


def measure_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second the CPU streams from memory with the current threads: the best
    reader's average over `repeats` reads of 1 GiB, among torch.sum, torch.max and, where it
    is built, the gemv kernel (which can read faster than torch.sum, so the roofline could
    be too low without it). An average, not the fastest read: a decoding run lasts seconds,
    and the luckiest of a few 50 ms reads would set the roof above what those seconds had."""
    x = torch.empty(int(gib * 2**30) // 4).uniform_()  # real data: no zero-page shortcuts
    readers = [torch.sum, torch.max]
    if gemv.available():
        matrix, row = x.view(-1, 1024), torch.ones(1024)
        readers.append(lambda _: gemv.gemv(matrix, row))
    spent = [0.0] * len(readers)
    for _ in range(repeats):
        for i, read in enumerate(readers):
            began = time.perf_counter()
            read(x)
            spent[i] += time.perf_counter() - began
    return repeats * x.numel() * 4 / min(spent)


def weight_bytes(model: BioGPT) -> int:
    """Bytes of the weights (tied head once): what one decoding step must read at least once."""
    return model.config.num_parameters() * model.dtype.itemsize


def int8_weight_bytes(model: BioGPT) -> int:
    """Bytes one int8 decoding step must read at least: the layers' linear weights and the
    output projection in int8 (the per-row scales are negligible), every other parameter
    in fp32; the token embedding counts once, as the projection (like `weight_bytes`)."""
    config = model.config
    with torch.device("meta"):
        fresh = BioGPT(config)  # `model` may be packed: count on an unpacked twin
    suffixes = ("_proj.weight", "fc1.weight", "fc2.weight")
    layers = sum(p.numel() for n, p in fresh.named_parameters() if n.endswith(suffixes))
    head = config.vocab_size * config.hidden_size
    return layers + head + 4 * (config.num_parameters() - layers - head)


def bytes_per_step(fp32: BioGPT) -> dict[str, int]:
    """What one batch-1 step must read at least, per kind of contender ("hf" is fp32)."""
    full = weight_bytes(fp32)
    return {"hf": full, "fp32": full, "bf16": full // 2, "int8": int8_weight_bytes(fp32)}


def copy_of(model: BioGPT, dtype: torch.dtype | str) -> BioGPT:
    """A copy of `model` in `dtype`, or with int8 linear layers ("int8")."""
    twin = BioGPT(model.config).eval()
    twin.load_state_dict(model.state_dict())
    if dtype == "int8":
        twin.quantize_int8()
        return twin
    return twin.to(dtype)


def top1_agreement(fp32: BioGPT, other: BioGPT, rows: int = 8, length: int = 128) -> float:
    """Share of positions where `other` and fp32 pick the same next token (teacher forced),
    with both prepared as greedy decoding runs them."""
    cpu.prepare(fp32), cpu.prepare(other)
    g = torch.Generator().manual_seed(0)
    length = min(length, fp32.config.max_positions)
    ids = torch.randint(4, fp32.config.vocab_size, (rows, length), generator=g)
    ids[:, 0] = 2
    with torch.inference_mode():
        a = fp32(ids).logits.argmax(-1)
        b = other(ids).logits.argmax(-1)
    return float((a == b).float().mean())


def peak_rss_worker(preset: str, tokens: int, dtype: str) -> None:
    """Run in a fresh process: build the model, decode, print peak and final RSS and the
    weight bytes. An int8 model is built in fp32 and quantised, as loading one does."""
    torch.manual_seed(0)
    if dtype != "int8":
        torch.set_default_dtype(getattr(torch, dtype))  # build in the target dtype: no fp32 copy
    model = BioGPT(ModelConfig.from_name(preset)).eval()
    if dtype == "int8":
        model.quantize_int8()
    model.generate(prompt_for(model.config), max_new_tokens=tokens, min_new_tokens=tokens)
    # VmHWM is this process's own peak; ru_maxrss would count the parent's pages at fork.
    with open("/proc/self/status") as f:
        status = f.read()
    peak, held = (int(status.split(key)[1].split()[0]) * 1024 for key in ("VmHWM:", "VmRSS:"))
    weights = int8_weight_bytes(model) if dtype == "int8" else weight_bytes(model)
    print(json.dumps({"peak_rss": peak, "rss": held, "weights": weights}))


@contextlib.contextmanager
def pinned(threads: int, fixed: bool) -> Iterator[None]:
    """PyTorch on `threads` threads, and this package's steps too when `fixed` (else they
    choose among the counts up to `threads`); the settings before are put back after."""
    before_threads, before_policy = (
        torch.get_num_threads(),
        os.environ.get(thread_choice.ENVIRONMENT),
    )
    torch.set_num_threads(threads)
    os.environ[thread_choice.ENVIRONMENT] = "fixed" if fixed else "adaptive"
    try:
        yield
    finally:
        torch.set_num_threads(before_threads)
        if before_policy is None:
            del os.environ[thread_choice.ENVIRONMENT]
        else:
            os.environ[thread_choice.ENVIRONMENT] = before_policy


def on_threads(run: Callable[[], None], threads: int) -> Callable[[], None]:
    """`run` pinned to `threads` threads (see `pinned`)."""

    def pinned_run() -> None:
        with pinned(threads, fixed=True):
            run()

    return pinned_run


def print_thread_table(
    n: int, best: dict[tuple[str, str], float], counts: list[int], has_hf: bool
) -> None:
    """Each strategy's speed at its default and pinned to each count; the default's share
    of the best count, and its ratio to transformers at its default and at its best count."""
    print("\nthread counts (fp32; new tokens per second):")
    columns = ["default"] + [f"@{c}" for c in counts]
    header = f"{'strategy':<10}" + "".join(f"{'ours ' + c:>13}" for c in columns)
    if has_hf:
        header += "".join(f"{'HF ' + c:>11}" for c in columns)
    print(header + f"{'default/best':>14}" + (f"{'vs HF':>8}{'vs HF best':>12}" if has_hf else ""))
    for label in ("greedy", "beam 5"):
        ours = {c: n / best[label, "fp32" + ("" if c == "default" else " " + c)] for c in columns}
        line = f"{label:<10}" + "".join(f"{ours[c]:>13.2f}" for c in columns)
        share = ours["default"] / max(ours[c] for c in columns[1:])
        if has_hf:
            hf = {c: n / best[label, "hf" + ("" if c == "default" else " " + c)] for c in columns}
            line += "".join(f"{hf[c]:>11.2f}" for c in columns)
            line += f"{share:>13.2f}x{ours['default'] / hf['default']:>7.2f}x"
            line += f"{ours['default'] / max(hf.values()):>11.2f}x"
        else:
            line += f"{share:>13.2f}x"
        print(line)
    print("(default: this package chooses its count per step; @N: pinned to N threads)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="biogpt")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--skip-hf", action="store_true", help="time this package only")
    parser.add_argument(
        "--dtypes", default="fp32,bf16,int8", help="this package's dtypes to time (comma list)"
    )
    parser.add_argument(
        "--fixed-threads",
        action="store_true",
        help="also time fp32 and transformers pinned to each candidate thread count",
    )
    parser.add_argument(
        "--busy", action="store_true", help="keep one core busy with a spinning process"
    )
    parser.add_argument(
        "--peak-rss-worker", choices=["float32", "bfloat16", "int8"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_rss_worker:
        peak_rss_worker(args.preset, args.tokens, args.peak_rss_worker)
        return

    n = args.tokens
    torch.manual_seed(0)
    ours = BioGPT(ModelConfig.from_name(args.preset)).eval()
    prompt = prompt_for(ours.config)
    kinds = tuple(kind for kind in ("fp32", "bf16", "int8") if kind in args.dtypes.split(","))
    if "fp32" not in kinds:
        parser.error("--dtypes must include fp32 (the reference of every ratio)")
    ours_bf16 = copy_of(ours, torch.bfloat16) if "bf16" in kinds else ours
    ours_int8 = copy_of(ours, "int8") if "int8" in kinds else ours
    counts = thread_choice.candidates(args.threads) if args.fixed_threads else []

    def ours_run(model: BioGPT, beams: int):
        return lambda: model.generate(prompt, max_new_tokens=n, min_new_tokens=n, num_beams=beams)

    def hf_run(model, beams: int):
        def run():
            with torch.inference_mode():
                model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    num_beams=beams,
                    do_sample=False,
                    pad_token_id=1,
                )

        return run

    from oracle import hf_twin  # here, not at the top: the peak-RSS worker must not load it

    hf = None if args.skip_hf else hf_twin(ours)
    contenders = {}
    # One model per dtype serves both strategies: up to 8 rows a step, greedy's one and beam
    # search's five run on the same layers (biogpt.cpu.packing), so alternating does not repack.
    for label, beams in (("greedy", 1), ("beam 5", 5)):
        if hf is not None:
            contenders[label, "hf"] = hf_run(hf, beams)
        for kind, model in (("fp32", ours), ("bf16", ours_bf16), ("int8", ours_int8)):
            if kind in kinds:
                contenders[label, kind] = ours_run(model, beams)
        for count in counts:
            contenders[label, f"fp32 @{count}"] = on_threads(ours_run(ours, beams), count)
            if hf is not None:
                contenders[label, f"hf @{count}"] = on_threads(hf_run(hf, beams), count)
    # The machines are shared and their speed drifts: run the contenders in interleaved
    # rounds (each round: every contender once) and keep each one's best. The bandwidth
    # swings too, with the neighbours' load, even within one run, so it is
    # read between every two runs, and each run's share of its roofline is taken against
    # the mean of the readings just before and just after it; the table gives the median
    # share over the rounds.
    load = one_core_busy() if args.busy else contextlib.nullcontext()
    with load:
        best, shares, bandwidths = race(contenders, args.repeats, n, ours)
    print_results(args, n, ours, kinds, best, shares, bandwidths)
    if counts:
        print_thread_table(n, best, counts, hf is not None)
    print_agreement_and_memory(args, n, ours, ours_bf16, ours_int8, kinds)


def race(
    contenders: dict[tuple[str, str], Callable[[], object]],
    repeats: int,
    n: int,
    ours: BioGPT,
) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], list[float]], list[float]]:
    """(best seconds, roofline shares, bandwidth readings) of interleaved rounds."""
    for fn in contenders.values():
        fn()  # warm-up: first-call costs, weight packing
    best = dict.fromkeys(contenders, float("inf"))
    shares: dict[tuple[str, str], list[float]] = {key: [] for key in contenders}
    step_bytes = bytes_per_step(ours)
    bandwidths = [measure_bandwidth(repeats=2)]
    for _ in range(repeats):
        for key, fn in contenders.items():
            began = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - began
            bandwidths.append(measure_bandwidth(repeats=2))
            best[key] = min(best[key], elapsed)
            around = (bandwidths[-2] + bandwidths[-1]) / 2
            shares[key].append((n / elapsed) / (around / step_bytes[key[1].split(" ")[0]]))
    return best, shares, bandwidths


def print_results(
    args: argparse.Namespace,
    n: int,
    ours: BioGPT,
    kinds: tuple[str, ...],
    best: dict[tuple[str, str], float],
    shares: dict[tuple[str, str], list[float]],
    bandwidths: list[float],
) -> None:
    step_bytes = bytes_per_step(ours)
    bandwidth = statistics.median(bandwidths)
    roofline = {kind: bandwidth / step_bytes[kind] for kind in kinds}
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}")
    busy = "one process spinning on one core" if args.busy else "none added"
    print(f"load: {busy}; load average before the run {os.getloadavg()[0]:.2f}")
    print(
        f"model {args.preset}: {ours.config.num_parameters() / 1e6:.1f}M parameters, "
        f"{args.threads} threads, {n} new tokens per run, prompt {len(PROMPT)} tokens, "
        f"best of {args.repeats} interleaved rounds"
    )
    print(
        f"memory bandwidth {bandwidth / 1e9:.1f} GB/s (median of {len(bandwidths)} readings, "
        f"{min(bandwidths) / 1e9:.0f} to {max(bandwidths) / 1e9:.0f}) -> roofline (batch 1) "
        + ", ".join(f"{kind} {tps:.2f} tok/s" for kind, tps in roofline.items())
        + "\n"
    )
    print(
        f"{'strategy':<10}{'HF fp32':>9}"
        + "".join(f"{'ours ' + kind:>11}{'ratio':>7}" for kind in kinds)
        + "".join(f"{kind + ' % roof':>12}" for kind in kinds)
    )
    for label in ("greedy", "beam 5"):
        hf_tps = n / best.get((label, "hf"), float("nan"))
        tps = {kind: n / best[label, kind] for kind in kinds}
        print(
            f"{label:<10}{hf_tps:>9.2f}"
            + "".join(f"{tps[kind]:>11.2f}{tps[kind] / hf_tps:>6.2f}x" for kind in kinds)
            + "".join(f"{100 * statistics.median(shares[label, kind]):>11.0f}%" for kind in kinds)
        )
    print("(new tokens per second, prefill included; ratios against transformers fp32;")
    print(" a beam-search token is one step of all 5 beams; roofline % only means much at batch 1:")
    print(" each run against the bandwidth read around it, the median over the rounds)")
    if ("greedy", "hf") in best:
        hf_tps = n / best["greedy", "hf"]
        print(
            "the roofline caps greedy at "
            + ", ".join(f"{kind} {roofline[kind] / hf_tps:.2f}x" for kind in kinds)
            + " transformers fp32 on this machine"
        )


def print_agreement_and_memory(
    args: argparse.Namespace,
    n: int,
    ours: BioGPT,
    ours_bf16: BioGPT,
    ours_int8: BioGPT,
    kinds: tuple[str, ...],
) -> None:
    """bf16's and int8's top-1 agreement with fp32, and peak memory in fresh processes."""
    print("\ntop-1 agreement with fp32 (teacher forced, random weights):")
    for kind, model in (("bf16", ours_bf16), ("int8", ours_int8)):
        if kind in kinds:
            print(f"  {kind}: {100 * top1_agreement(ours, model):.2f}%")

    names = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}
    for dtype in (names[kind] for kind in kinds):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--peak-rss-worker",
                dtype,
                "--preset",
                args.preset,
                "--tokens",
                str(n),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        info = json.loads(out.stdout.strip().splitlines()[-1])
        if dtype == "int8":  # no budget set; its peak is the fp32 model it is made from
            print(
                f"memory, greedy int8 in a fresh process: {info['rss'] / 1e6:.0f} MB held after "
                f"decoding (weights {info['weights'] / 1e6:.0f} MB), peak "
                f"{info['peak_rss'] / 1e6:.0f} MB while it was built in fp32 and quantised"
            )
            continue
        budget = 1.15 * info["weights"] + 300e6
        print(
            f"peak RSS, greedy {dtype} in a fresh process: {info['peak_rss'] / 1e6:.0f} MB "
            f"(weights {info['weights'] / 1e6:.0f} MB; budget 1.15 x weights + 300 MB = "
            f"{budget / 1e6:.0f} MB: {'within' if info['peak_rss'] <= budget else 'OVER'})"
        )


if __name__ == "__main__":
    main()
