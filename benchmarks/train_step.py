"""Training speed on CPU: our training step against transformers', in one run.

One step = forward + loss + backward + AdamW update, on the same batch with the same
weights (ours copied into `BioGptForCausalLM`), dropout on in both. Ours is the step
`biogpt.train` takes (`accumulate_gradients`: summed token loss over shifted labels, no
attention mask for right-padded batches; AdamW with foreach=True). transformers' is what a
user of its model writes: `model(input_ids, labels=input_ids).loss.backward()` with
`torch.optim.AdamW` at its defaults. A third line gives transformers' model with our
optimiser settings, to separate model from optimiser. Steps alternate between the
contenders and the best of n is kept, so a busy neighbour hurts both alike.

    python benchmarks/train_step.py [--preset biogpt-mini] [--batch 8] [--length 256]
                                    [--steps 5] [--threads 2] [--dtype fp32|bf16|both]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from oracle import hf_twin

from biogpt.config import ModelConfig
from biogpt.data import collate
from biogpt.model import BioGPT
from biogpt.train import accumulate_gradients


def adamw(model: torch.nn.Module, **options) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01, **options
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="biogpt-mini")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contender")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=("fp32", "bf16", "both"), default="fp32")
    parser.add_argument(
        "--ragged",
        action="store_true",
        help="rows of random lengths in [length/2, length], right-padded (fine-tuning batches); "
        "transformers gets the attention mask and -100 labels on padding",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = ModelConfig.from_name(args.preset)
    torch.manual_seed(0)
    ours = BioGPT(config).train()
    theirs = hf_twin(ours).train()
    theirs_same_optimiser = hf_twin(ours).train()
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(4, config.vocab_size, (args.batch, args.length), generator=g)
    rows[:, 0] = 2  # every input starts with </s>
    lengths = [args.length] * args.batch
    if args.ragged:
        lengths = torch.randint(args.length // 2, args.length + 1, (args.batch,), generator=g)
        lengths[0] = args.length
    batch = collate([(r[:n].tolist(), None) for r, n in zip(rows, lengths, strict=True)], False)
    ids, mask, labels = batch.input_ids, batch.attention_mask, batch.labels
    tokens = batch.tokens  # real tokens: padding is not counted as throughput
    print(
        f"preset {args.preset} ({config.num_parameters() / 1e6:.1f}M parameters), batch "
        f"{args.batch} x {args.length}, {tokens} real tokens "
        f"({1 - tokens / ids.numel():.0%} padding), {args.threads} threads, "
        f"torch {torch.__version__}"
    )

    for dtype in ("fp32", "bf16") if args.dtype == "both" else (args.dtype,):
        autocast = (
            (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
            if dtype == "bf16"
            else nullcontext
        )
        opt_ours = adamw(ours, foreach=True)
        opt_theirs = adamw(theirs)  # the defaults: a per-parameter loop on CPU
        opt_same = adamw(theirs_same_optimiser, foreach=True)

        def ours_step(opt=opt_ours, dtype=dtype) -> float:
            loss, _ = accumulate_gradients(ours, [batch], dtype)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        def hf_step(model=theirs, opt=opt_theirs, autocast=autocast) -> float:
            with autocast():
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        contenders: dict[str, Callable[[], float]] = {
            "ours": ours_step,
            "transformers": hf_step,
            "transformers + our AdamW": lambda o=opt_same: hf_step(theirs_same_optimiser, o),
        }
        best = {name: float("inf") for name in contenders}
        losses = {name: fn() for name, fn in contenders.items()}  # warm-up, and a sanity check
        for _ in range(args.steps):
            for name, fn in contenders.items():
                began = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - began)
        print(f"\n{dtype}: first-step loss ours {losses['ours']:.4f}, "
              f"transformers {losses['transformers']:.4f}")  # fmt: skip
        for name, seconds in best.items():
            ratio = best["transformers"] / seconds
            print(f"  {name:26s} {tokens / seconds:9.0f} tokens/s  ({ratio:.2f}x transformers)")


if __name__ == "__main__":
    main()
