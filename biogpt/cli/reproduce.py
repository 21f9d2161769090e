"""`biogpt reproduce`: the paper's fine-tuning and evaluation of each task, resumable, with
an estimate first (`biogpt.reproduce.run.reproduce`)."""

from __future__ import annotations

import argparse

from biogpt.cli.common import AddCommand, add_model_flag, add_trust_pickle_flag, positive_int

EXAMPLES = """\
# every paper task whose training split is under --data, on a small slice (--quick: the
# first 16 training and 8 test examples, 1 epoch, short answers): first the estimate, on
# stderr each stage as it starts and ends, then each task's score beside the paper's
$ biogpt reproduce --model mini --out runs/quick --data data/ --quick
estimate: training on cpu at ... tokens/s, decoding on ... at ... ms a step
task train ex updates tokens train test ex predict peak memory
bc5cdr 3 1 ...
...
task metric ours paper recipe
bc5cdr f1 ... 44.98 quick
bc5cdr: not the paper's recipe: max_epochs 1 (paper 100), ...

# the same command with --resume continues a run that was stopped, skipping finished
# stages; a flag given with another value than the run was started with is refused
$ biogpt reproduce --out runs/quick --resume
...
bc5cdr f1 ... 44.98 quick
...

# the time and memory the paper's recipe would take on this machine, and nothing run
$ biogpt reproduce --model mini --task bc5cdr --data data/ --estimate-only
estimate: training on cpu at ... tokens/s, decoding on ... at ... ms a step
...
bc5cdr 3 100 ...
total: ... training tokens, ..., peak memory ...
"""


def cmd_reproduce(args: argparse.Namespace) -> None:
    from biogpt.reproduce.run import reproduce

    reproduce(
        args.model,
        args.out,
        tasks=args.task,
        data=args.data,
        resume=args.resume,
        overwrite=args.overwrite,
        estimate_only=args.estimate_only,
        trust_pickle=args.trust_pickle,
        quick=args.quick,
        dtype=args.dtype,
        batch_size=args.batch_size,
        seed=args.seed,
        epochs=args.epochs,
        max_updates=args.max_updates,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        max_new_tokens=args.max_new_tokens,
        lr=args.lr,
        warmup_updates=args.warmup_updates,
        tokens_per_update=args.tokens_per_update,
    )


def register(add: AddCommand) -> None:
    from biogpt.reproduce.settings import QUICK, TASK_CHOICES, Settings
    from biogpt.training.config import DTYPES

    parser = add(
        "reproduce",
        cmd_reproduce,
        "Reproduce the paper's results: fine-tune a base model on each task with its "
        "recipe, predict and score the test split, and report them beside the paper's "
        "numbers. Every stage resumes after a stop; an estimate of the time and memory "
        "comes first. Flags that scale the recipe down are recorded and shown.",
        EXAMPLES,
    )
    # --model: required to start a run; a resumed one takes the recorded model.
    add_model_flag(parser, required=False)
    add_trust_pickle_flag(parser)
    parser.add_argument(
        "--task",
        action="append",
        choices=TASK_CHOICES,
        help="a task to run (repeat for more; default: every paper task whose training "
        "split is under --data)",
    )
    parser.add_argument("--out", help="run directory (not needed with --estimate-only)")
    parser.add_argument(
        "--data",
        help="data root, one folder per dataset (bc5cdr/, ddi/, hoc/, ...); default: $BIOGPT_DATA",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier run in --out")
    parser.add_argument(
        "--estimate-only", action="store_true", help="print the estimate and stop; write nothing"
    )
    caps = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items())
    # store_true with default None: left out, a resumed run keeps its recorded value.
    parser.add_argument("--quick", action="store_true", default=None, help=f"a smoke test ({caps})")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help=f"training autocast and decoding weights (default: {Settings.dtype}, the paper's)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help=f"prompts decoded together (default: {Settings.batch_size})",
    )
    parser.add_argument("--seed", type=int, help="training seed (default: the recipe's)")
    group = parser.add_argument_group("scaling the recipe down (recorded as recipe changes)")
    group.add_argument("--epochs", type=positive_int, help="at most N epochs per task")
    group.add_argument(
        "--max-updates", type=positive_int, help="at most N optimiser updates per task"
    )
    group.add_argument(
        "--train-limit", type=positive_int, help="train on the first N examples of each task"
    )
    group.add_argument(
        "--test-limit", type=positive_int, help="score the first N test examples of each task"
    )
    group.add_argument(
        "--max-new-tokens", type=positive_int, help="answer length limit (default: per task)"
    )
    group.add_argument("--lr", type=float, help="peak learning rate (default: the task's)")
    group.add_argument(
        "--warmup-updates", type=positive_int, help="linear warmup updates (default: the task's)"
    )
    group.add_argument(
        "--tokens-per-update",
        type=positive_int,
        help="tokens an optimiser update accumulates (default: the task's)",
    )
