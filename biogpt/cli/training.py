"""Training commands: finetune (a task's recipe, then `biogpt.training.finetune`) and pretrain
(a `PretrainConfig` from a file and flags, then `biogpt.training.pretrain`)."""

from __future__ import annotations

import argparse
import sys

from biogpt.cli.common import (
    AddCommand,
    add_model_flag,
    add_run_directory_flags,
    add_task_flags,
    add_training_flags,
    add_trust_pickle_flag,
    config_overrides,
)

# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------

# finetune flag dest -> TrainConfig field, where the names differ
FINETUNE_RENAMED = {"epochs": "max_epochs", "warmup": "warmup_updates"}


def cmd_finetune(args: argparse.Namespace) -> None:
    from biogpt.training.config import TrainConfig
    from biogpt.training.finetune import finetune

    overrides = config_overrides(args, TrainConfig, FINETUNE_RENAMED)
    if args.save_last_only:
        overrides["save_every_epoch"] = False
    final, result = finetune(
        args.task,
        args.model,
        args.out,
        data_dir=args.data,
        limit=args.limit,
        validate=not args.no_valid,
        resume=args.resume,
        overwrite=args.overwrite,
        trust_pickle=args.trust_pickle,
        **overrides,
    )
    print(
        f"fine-tuned model: {final}  ({result.steps} updates, {result.epochs} epochs; "
        f"log {result.log})"
    )


FINETUNE_EXAMPLES = """\
# the paper's recipe for BC5CDR (its data under --data, or $BIOGPT_DATA); the last line
# names the model to predict with: the average of the last epochs' checkpoints
$ biogpt finetune --task bc5cdr --model mini --out runs/bc5cdr --data data/
fine-tuned model: runs/bc5cdr/averaged  (... updates, ... epochs; log runs/bc5cdr/log.jsonl)

# a quick trial: the first 2 examples, 3 updates, no validation, the last checkpoint only
$ biogpt finetune --task bc5cdr --model mini --out runs/trial --data data/ --limit 2 \\
    --max-updates 3 --no-valid --average-last 0
fine-tuned model: runs/trial/checkpoints/...  (... updates, ... epochs; log runs/trial/log.jsonl)
"""


def register_finetune(add: AddCommand) -> None:
    from biogpt.training.config import TrainConfig

    parser = add(
        "finetune",
        cmd_finetune,
        "Fine-tune a model on a task with the paper's recipe (prompt tokens, Adam, "
        "inverse-sqrt schedule); defaults are the task's published hyper-parameters.",
        FINETUNE_EXAMPLES,
    )
    add_task_flags(parser, split=False)
    add_model_flag(parser)
    add_trust_pickle_flag(parser)
    add_run_directory_flags(parser, required=True)
    parser.add_argument("--epochs", type=int, help="epochs to train (default: the task's)")
    parser.add_argument("--max-updates", type=int, help="stop after this many optimiser updates")
    parser.add_argument("--warmup", type=int, help="warmup updates (default: the task's)")
    add_training_flags(parser, TrainConfig(), per_task=("lr", "tokens_per_update"))
    parser.add_argument(
        "--max-tokens-per-batch",
        type=int,
        help=f"micro-batch size in tokens (default: {TrainConfig.max_tokens_per_batch})",
    )
    parser.add_argument(
        "--loss", choices=["full", "target"], help="whole sequence (the paper) or target only"
    )
    parser.add_argument(
        "--average-last",
        type=int,
        help="average the last k epoch checkpoints (default: the task's)",
    )
    parser.add_argument("--save-last-only", action="store_true", help="checkpoint only at the end")
    parser.add_argument("--limit", type=int, help="train on the first N examples only")
    parser.add_argument("--no-valid", action="store_true", help="skip the validation loss")


# --------------------------------------------------------------------------------------------
# pretrain
# --------------------------------------------------------------------------------------------

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


def register_pretrain(add: AddCommand) -> None:
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


def register(add: AddCommand) -> None:
    register_finetune(add)
    register_pretrain(add)
