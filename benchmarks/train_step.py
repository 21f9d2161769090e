"""Training speed on CPU: our training step against transformers', in one run.

One step = forward + loss + backward + AdamW update, on the same batch with the same
weights (ours copied into `BioGptForCausalLM`), dropout on in both. Ours is the step
`biogpt.training.loop` takes (`accumulate_gradients` on a `TokenLoss`: summed token loss over
shifted labels with the output layer and cross-entropy fused, no attention mask for
right-padded batches; AdamW with foreach=True). transformers' is what a
user of its model writes: `model(input_ids, labels=input_ids).loss.backward()` with
`torch.optim.AdamW` at its defaults. A third line gives transformers' model with our
optimiser settings, to separate model from optimiser. Steps alternate between the
contenders and the best of n is kept, so a busy neighbour hurts both alike.

    python benchmarks/train_step.py [--preset biogpt-mini] [--batch 8] [--length 256]
                                    [--steps 5] [--threads 2] [--dtype fp32|bf16|both]
"""

from __future__ import annotations

import argparse

import torch
from oracle import race_training_steps

from biogpt.config import ModelConfig
from biogpt.model import BioGPT
from biogpt.training.batching import collate
from biogpt.training.loss import TokenLoss


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
    lm = BioGPT(config).train()
    ours = TokenLoss(lm)  # as `biogpt.training.loop.train` wraps it
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

    dtypes = ("fp32", "bf16") if args.dtype == "both" else (args.dtype,)
    hf_inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    race_training_steps(ours, lm, batch, hf_inputs, dtypes, args.steps, tokens, lr=1e-5)


if __name__ == "__main__":
    main()
