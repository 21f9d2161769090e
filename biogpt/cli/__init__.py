"""The `biogpt` command line: each subcommand parses its flags and calls one library function.

Errors the user can fix (a missing file, a bad flag value) come out as one line on stderr
and exit status 2; nothing prints a stack trace for them. Subcommands live in modules by
theme (`text`, `tasks`), each with a `register(add)` that declares its parsers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from biogpt.cli import data, pretrain, tasks, text
from biogpt.errors import BioGPTError

MODULES = (text, tasks, data, pretrain)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biogpt",
        description="BioGPT for biomedical text: tokenize, generate, score, convert checkpoints, "
        "fine-tune, predict and evaluate tasks.",
        epilog="Run `biogpt COMMAND --help` for the flags of each command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], None], help: str, example: str):
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    for module in MODULES:
        module.register(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BioGPTError as err:
        print(f"biogpt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"biogpt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `biogpt tokenize ... | head`
        return 0
    return 0
