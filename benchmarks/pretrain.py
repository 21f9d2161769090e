"""Pretraining speed: our training step against transformers' on 1024-token blocks, and MFU.

Part 1 (any device; CPU here): one step = forward + loss + backward + AdamW update on the same
batch of full blocks (what `ShardBatches` yields: no padding) with the same weights, dropout
on in both, in fp32 and bf16 autocast. Ours is the step `biogpt.training.loop` takes (`TokenLoss`:
the vocabulary projection only on trained positions, fused with its cross-entropy; dropout
masks from `biogpt.dropout`; AdamW foreach). transformers' is
`BioGptForCausalLM(input_ids, labels=input_ids).loss.backward()` with `torch.optim.AdamW` at
its defaults; a third line gives it our AdamW settings. Contenders alternate and the best of
n steps is kept, so a busy neighbour hurts both alike.

Part 2 (CUDA only, skipped on CPU): model FLOPs utilisation of our step for the 347M preset
in bf16: (6 * N + 12 * L * H * T) * tokens/s / peak, N the parameters used in matmuls (the
tied head counted once, the position table not), L layers, H hidden, T block length (the
attention term of PaLM's appendix B, causal masking not discounted); peak from --peak-tflops
(989: H100 SXM dense bf16).

    python benchmarks/pretrain.py [--preset biogpt-mini] [--blocks 2] [--length 1024]
                                  [--steps 3] [--threads 2] [--dtype both]
                                  [--mfu-preset biogpt] [--mfu-blocks 8] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import time

import torch
from oracle import adamw, race_training_steps

from biogpt.config import ModelConfig
from biogpt.model import BioGPT
from biogpt.training.batching import Batch
from biogpt.training.loss import TokenLoss
from biogpt.training.step import accumulate_gradients


def blocks(config: ModelConfig, rows: int, length: int, device: str) -> Batch:
    """A batch of full token blocks, as `ShardBatches` makes them."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, config.vocab_size, (rows, length), generator=g).to(device)
    return Batch(ids, torch.ones_like(ids), ids, ids.numel(), ids.numel() - rows)


def compare_with_transformers(args: argparse.Namespace, device: str) -> None:
    config = ModelConfig.from_name(args.preset)
    torch.manual_seed(0)
    ours = TokenLoss(BioGPT(config).to(device).train())
    batch = blocks(config, args.blocks, args.length, device)
    ids = batch.input_ids
    print(
        f"preset {args.preset} ({config.num_parameters() / 1e6:.1f}M parameters), "
        f"{args.blocks} blocks x {args.length} tokens, {torch.get_num_threads()} threads, "
        f"{device}, torch {torch.__version__}"
    )
    dtypes = ("fp32", "bf16") if args.dtype == "both" else (args.dtype,)
    race_training_steps(
        ours, ours.lm, batch, {"input_ids": ids, "labels": ids}, dtypes, args.steps,
        batch.tokens, lr=2e-4, device=device,
    )  # fmt: skip


def flops_per_token(config: ModelConfig, length: int) -> float:
    """Training FLOPs per token: 6 per matmul parameter plus attention's 12 * L * H * T."""
    matmul_params = config.num_parameters() - (config.max_positions + 2) * config.hidden_size
    return 6 * matmul_params + 12 * config.num_layers * config.hidden_size * length


def model_flops_utilisation(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        print("\nMFU: skipped (no CUDA device)")
        return
    config = ModelConfig.from_name(args.mfu_preset)
    torch.manual_seed(0)
    lm = BioGPT(config).to("cuda").train()
    if args.compile:
        for layer in lm.biogpt.layers:
            layer.compile()
    model = TokenLoss(lm)
    optimizer = adamw(model, 2e-4, fused=True)
    batch = blocks(config, args.mfu_blocks, args.length, "cuda")

    def step() -> None:
        accumulate_gradients(model, [batch], "bf16")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: kernels, allocator, compilation
        step()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(args.mfu_steps):
        step()
    torch.cuda.synchronize()
    speed = batch.tokens * args.mfu_steps / (time.perf_counter() - began)
    achieved = flops_per_token(config, args.length) * speed
    print(
        f"\nMFU ({torch.cuda.get_device_name()}): preset {args.mfu_preset}, bf16, "
        f"{args.mfu_blocks} x {args.length} tokens per step{', compiled' if args.compile else ''}"
        f"\n  {speed:9.0f} tokens/s, {achieved / 1e12:.1f} TFLOP/s, "
        f"MFU {achieved / (args.peak_tflops * 1e12):.1%} of {args.peak_tflops:g} TFLOP/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="biogpt-mini", help="model for the comparison")
    parser.add_argument("--blocks", type=int, default=2, help="rows per step (comparison)")
    parser.add_argument("--length", type=int, default=1024, help="tokens per block")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per contender")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=("fp32", "bf16", "both"), default="both")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-comparison", action="store_true", help="MFU only")
    parser.add_argument("--mfu-preset", default="biogpt", help="the 347M model by default")
    parser.add_argument("--mfu-blocks", type=int, default=8, help="rows per step (MFU)")
    parser.add_argument("--mfu-steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile layers (MFU)")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="GPU peak dense bf16 (H100 SXM: 989)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_comparison:
        compare_with_transformers(args, args.device)
    model_flops_utilisation(args)


if __name__ == "__main__":
    main()
