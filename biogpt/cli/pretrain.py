"""The pretrain command: a `PretrainConfig` from a file and flags, then `biogpt.training.pretrain`."""

from __future__ import annotations

import argparse
import sys

from biogpt.cli.common import (
    AddCommand,
    add_run_directory_flags,
    add_training_flags,
    config_overrides,
)

# tests/test_cli.py runs these examples with tiny blocks and 2 updates.
PRETRAIN_EXAMPLES = """\
# the paper's recipe on a smaller model, from token shards (see `biogpt binarize`)
$ biogpt pretrain --data shards/ --out runs/pt --preset biogpt-small --max-steps 1000
pretrained: runs/pt/checkpoints/...  (... updates; log runs/pt/log.jsonl)

# on 2 GPUs (or 2 CPU processes): the same global batch, each rank half of it; every rank
# prints its last line, and rank 0, which writes the checkpoints, names the last one
$ torchrun --nproc_per_node 2 -m biogpt pretrain --data shards/ --out runs/pt2 \\
    --preset biogpt-small --max-steps 1000 --dtype bf16
pretrained: runs/pt2/checkpoints/...  (... updates; log runs/pt2/log.jsonl)

# from a config file (TOML or JSON, keys as the flags' long names with underscores),
# flags overriding it; after an interruption, the same command with --resume continues
$ biogpt pretrain --config pretrain.toml --lr 1e-4
pretrained: .../checkpoints/...  (... updates; log .../log.jsonl)
"""

# flag dest -> PretrainConfig field, where the names differ
RENAMED = {"max_steps": "max_updates"}


def cmd_pretrain(args: argparse.Namespace) -> None:
    from biogpt.training.pretrain import PretrainConfig, pretrain

    overrides = config_overrides(args, PretrainConfig, RENAMED)
    if args.config:
        config = PretrainConfig.load(args.config, **overrides)
    else:
        config = PretrainConfig(**overrides)
    result = pretrain(config, resume=args.resume, overwrite=args.overwrite)
    line = f"pretrained: {result.last_checkpoint}  ({result.steps} updates; log {result.log})"
    # One write, newline included: under torchrun every rank prints its line to one stream.
    sys.stdout.write(line + "\n")


def add_data_and_model_flags(parser: argparse.ArgumentParser, defaults) -> None:
    parser.add_argument("--data", help="token shard directory (manifest.json; `biogpt binarize`)")
    parser.add_argument(
        "--preset",
        help=f"model shape: biogpt, biogpt-large, biogpt-small, ... (default: {defaults.preset})",
    )
    parser.add_argument("--init-from", help="start from this checkpoint instead of random weights")
    parser.add_argument(
        "--tokens-per-sample",
        type=int,
        help=f"block length in tokens (default: {defaults.tokens_per_sample})",
    )


def add_optimisation_flags(parser: argparse.ArgumentParser, defaults) -> None:
    parser.add_argument(
        "--max-steps", type=int, help=f"optimiser updates in all (default: {defaults.max_updates})"
    )
    add_training_flags(parser, defaults)
    parser.add_argument(
        "--warmup-updates",
        type=int,
        help=f"linear warmup updates (default: {defaults.warmup_updates})",
    )
    parser.add_argument(
        "--schedule",
        choices=["inverse_sqrt", "cosine"],
        help=f"after warmup (default: {defaults.schedule})",
    )
    parser.add_argument(
        "--clip-norm",
        type=float,
        help=f"max gradient norm; 0 = none (default: {defaults.clip_norm})",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        help=f"decoupled weight decay (default: {defaults.weight_decay})",
    )
    parser.add_argument(
        "--blocks-per-batch",
        type=int,
        help=f"micro-batch rows per process (default: {defaults.blocks_per_batch})",
    )


def add_system_flags(parser: argparse.ArgumentParser, defaults) -> None:
    """Where and how the run computes, validates and saves."""
    # store_true with default None: unset leaves the config file's value
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile layers")
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        default=None,
        help="recompute layer activations in backward (less memory, ~1/3 more compute)",
    )
    parser.add_argument(
        "--distributed",
        choices=["ddp", "fsdp"],
        help=f"under torchrun (default: {defaults.distributed})",
    )
    parser.add_argument(
        "--valid-every",
        type=int,
        help=f"validation perplexity every n updates (default: {defaults.valid_every})",
    )
    parser.add_argument(
        "--save-every",
        type=int,
        help=f"checkpoint every n updates (default: {defaults.save_every})",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if present)")


def register(add: AddCommand) -> None:
    """Every flag but --config, --resume and --overwrite sets the PretrainConfig field of its
    name (`RENAMED` where it is spelt otherwise); unset, it leaves the config file's value or
    the field's default, which --help shows."""
    from biogpt.training.pretrain import PretrainConfig

    defaults = PretrainConfig()
    parser = add(
        "pretrain",
        cmd_pretrain,
        "Pretrain a model from random weights on token shards with the paper's recipe "
        "(1024-token blocks, Adam, peak lr 2e-4, inverse-sqrt after 20k warmup updates). "
        "Launch with torchrun for several GPUs or processes.",
        PRETRAIN_EXAMPLES,
    )
    parser.add_argument(
        "--config", help="TOML or JSON file of PretrainConfig keys; flags override it"
    )
    add_run_directory_flags(parser, required=False)
    add_data_and_model_flags(parser, defaults)
    add_optimisation_flags(parser, defaults)
    add_system_flags(parser, defaults)
