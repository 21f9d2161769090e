"""The pretrain command: a `PretrainConfig` from a file and flags, then `biogpt.training.pretrain`."""

from __future__ import annotations

import argparse
from dataclasses import fields

from biogpt.cli.common import AddCommand

EXAMPLE = """biogpt pretrain --data shards/ --out runs/pt --preset biogpt-small --max-steps 1000

  on 2 GPUs (or 2 CPU processes), same global batch, each rank half of it:
  torchrun --nproc_per_node 2 -m biogpt pretrain --data shards/ --out runs/pt \\
      --preset biogpt --dtype bf16 --compile

  from a config file (TOML or JSON, keys as the flags' long names with underscores),
  flags overriding it:
  biogpt pretrain --config pretrain.toml --lr 1e-4 --resume"""

# flag dest -> PretrainConfig field, where the names differ
RENAMED = {"max_steps": "max_updates"}


def cmd_pretrain(args: argparse.Namespace) -> None:
    from biogpt.training.pretrain import PretrainConfig, pretrain

    names = {f.name for f in fields(PretrainConfig)}
    given = {RENAMED.get(k, k): v for k, v in vars(args).items()}
    overrides = {k: v for k, v in given.items() if k in names and v is not None}
    if args.config:
        config = PretrainConfig.load(args.config, **overrides)
    else:
        config = PretrainConfig(**overrides)
    result = pretrain(config, resume=args.resume, overwrite=args.overwrite)
    print(f"pretrained: {result.last_checkpoint}  ({result.steps} updates; log {result.log})")


def register(add: AddCommand) -> None:
    p = add(
        "pretrain",
        cmd_pretrain,
        "Pretrain a model from random weights on token shards with the paper's recipe "
        "(1024-token blocks, Adam, peak lr 2e-4, inverse-sqrt after 20k warmup updates). "
        "Launch with torchrun for several GPUs or processes.",
        EXAMPLE,
    )
    p.add_argument("--config", help="TOML or JSON file of PretrainConfig keys; flags override it")
    p.add_argument("--data", help="token shard directory (manifest.json; `biogpt data`)")
    p.add_argument("--out", help="run directory: checkpoints, log.jsonl, loss.png")
    p.add_argument("--preset", help="model shape: biogpt, biogpt-large, biogpt-small, ...")
    p.add_argument("--init-from", help="start from this checkpoint instead of random weights")
    p.add_argument("--max-steps", type=int, help="optimiser updates in all (200000)")
    p.add_argument("--lr", type=float, help="peak learning rate (2e-4)")
    p.add_argument("--warmup-updates", type=int, help="linear warmup updates (20000)")
    p.add_argument("--schedule", choices=["inverse_sqrt", "cosine"], help="after warmup")
    p.add_argument("--clip-norm", type=float, help="max gradient norm; 0 = none")
    p.add_argument("--weight-decay", type=float, help="decoupled weight decay (0.01)")
    p.add_argument("--tokens-per-sample", type=int, help="block length in tokens (1024)")
    p.add_argument("--tokens-per-update", type=int, help="global batch in tokens (131072)")
    p.add_argument("--blocks-per-batch", type=int, help="micro-batch rows per process (8)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], help="fp32, or bf16 autocast")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile layers")
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        default=None,
        help="recompute layer activations in backward (less memory, ~1/3 more compute)",
    )
    p.add_argument("--distributed", choices=["ddp", "fsdp"], help="under torchrun (ddp)")
    p.add_argument("--valid-every", type=int, help="validation perplexity every n updates")
    p.add_argument("--save-every", type=int, help="checkpoint every n updates (1000)")
    p.add_argument("--seed", type=int, help="init, data order and dropout seed")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if present)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run in --out")
