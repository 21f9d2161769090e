"""Training commands: finetune (a task's recipe, then `biogpt.training.finetune`) and pretrain
(a `PretrainConfig` from a file and flags, then `biogpt.training.pretrain`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biogpt.cli.common import (
    AddCommand,
    add_model_flag,
    add_run_directory_flags,
    add_task_flags,
    add_training_flags,
    add_trust_pickle_flag,
    check_device,
    config_overrides,
)
from biogpt.errors import BioGPTError

# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------

# finetune flag dest -> TrainConfig field, where the names differ
FINETUNE_RENAMED = {"epochs": "max_epochs"}
# Flags renamed so that finetune and pretrain spell the same setting alike: the old dest ->
# (the old flag, the new flag, the new dest). The old spellings still work, hidden from
# --help, with a note on stderr.
DEPRECATED = {
    "warmup": ("--warmup", "--warmup-updates", "warmup_updates"),
    "max_steps": ("--max-steps", "--max-updates", "max_updates"),
}


class DeprecatedFlag(argparse.Action):
    """The old spelling of a renamed flag (`DEPRECATED`): sets the new flag's dest (where
    both are given, the last wins, as for one flag given twice) and its own, as the first
    release parsed it, and says on stderr that it is deprecated."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        old, new, dest = DEPRECATED[self.dest]
        setattr(namespace, self.dest, values)
        setattr(namespace, dest, values)
        print(f"{parser.prog}: note: {old} is deprecated; use {new}", file=sys.stderr)


# Flags whose 0 has no use on the command line (the library reads 0 as "no bound" for some).
POSITIVE = ("lr", "epochs", "max_updates", "tokens_per_update", "max_tokens_per_batch", "limit")


def refuse_nonpositive(args: argparse.Namespace) -> None:
    """A one-line error for a flag of `POSITIVE` given 0 or less, before any work."""
    for dest in POSITIVE:
        value = getattr(args, dest, None)
        if value is not None and value <= 0:
            raise BioGPTError(f"--{dest.replace('_', '-')} {value}: expected a positive number")


def add_deprecated_flag(parser: argparse.ArgumentParser, dest: str, type: type) -> None:
    """The old spelling of a renamed flag (`DEPRECATED`), accepted but not shown."""
    parser.add_argument(
        DEPRECATED[dest][0], dest=dest, type=type, action=DeprecatedFlag, help=argparse.SUPPRESS
    )


def cmd_finetune(args: argparse.Namespace) -> None:
    from biogpt.training.config import TrainConfig
    from biogpt.training.finetune import finetune

    refuse_nonpositive(args)
    overrides = config_overrides(args, TrainConfig, FINETUNE_RENAMED)
    if args.save_last_only:
        overrides["save_every_epoch"] = False
    final, result = finetune(
        args.task,
        args.model,
        args.out,
        data_dir=args.data,
        limit=args.limit,
        validate=False if args.no_valid else None,  # left out: the recorded run's, else on
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

# continue a run with the settings it recorded (run.json), here for 2 more updates;
# --task and --model come from the run, and a setting given anew must match it
$ biogpt finetune --out runs/trial --resume --max-updates 5
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
    # --task and --model: required to start a run, recorded by it for --resume (the library
    # says which is missing)
    add_task_flags(parser, required=False, split=False)
    add_model_flag(parser, required=False)
    add_trust_pickle_flag(parser)
    add_run_directory_flags(parser, required=True)
    parser.add_argument("--epochs", type=int, help="epochs to train (default: the task's)")
    parser.add_argument("--max-updates", type=int, help="stop after this many optimiser updates")
    parser.add_argument("--warmup-updates", type=int, help="warmup updates (default: the task's)")
    add_deprecated_flag(parser, "warmup", int)
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
$ biogpt pretrain --data shards/ --out runs/pt --preset biogpt-small --max-updates 1000
pretrained: runs/pt/checkpoints/...  (... updates; log runs/pt/log.jsonl)

# on 2 GPUs (or 2 CPU processes): the same global batch, each rank half of it; every rank
# prints its last line, and rank 0, which writes the checkpoints, names the last one
$ torchrun --nproc_per_node 2 -m biogpt pretrain --data shards/ --out runs/pt2 \\
    --preset biogpt-small --max-updates 1000 --dtype bf16
pretrained: runs/pt2/checkpoints/...  (... updates; log runs/pt2/log.jsonl)

# from a config file (TOML or JSON, keys as the flags' long names with underscores),
# flags overriding it; after an interruption, --resume continues the run in --out (or the
# file's `out`) with the settings it recorded (run.json): only --max-updates may change
$ biogpt pretrain --config pretrain.toml --lr 1e-4
pretrained: .../checkpoints/...  (... updates; log .../log.jsonl)
"""


def cmd_pretrain(args: argparse.Namespace) -> None:
    from biogpt.training.pretrain import PretrainConfig, pretrain
    from biogpt.training.settings import read_run

    refuse_nonpositive(args)
    check_device(args.device)
    overrides = config_overrides(args, PretrainConfig)
    from_file = PretrainConfig.read(args.config) if args.config else {}
    # Resuming, what neither the file nor a flag sets is the recorded run's.
    out = Path(overrides.get("out") or from_file.get("out") or PretrainConfig.out)
    recorded = read_run(out) if args.resume else None
    started = (recorded or {}).get("pretrain") or {}
    values = {**started, **from_file, **overrides}
    try:
        config = PretrainConfig(**values)
    except BioGPTError as err:
        raise BioGPTError(f"--config {args.config}: {err}" if args.config else str(err)) from None
    except TypeError as err:  # run.json of another version: a field this one does not know
        raise BioGPTError(f"{out}/run.json: not this version's settings ({err})") from None
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
        "--max-updates",
        type=int,
        help=f"optimiser updates in all (default: {defaults.max_updates})",
    )
    add_deprecated_flag(parser, "max_steps", int)
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
    name; unset, it leaves the config file's value (or, resuming, the recorded run's) or the
    field's default, which --help shows."""
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
