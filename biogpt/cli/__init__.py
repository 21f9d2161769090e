"""The `biogpt` command line: each subcommand parses its flags and calls one library function.

Errors the user can fix (a missing file, a bad flag value) come out as one line on stderr
and exit status 2; nothing prints a stack trace for them. Subcommands live in modules by
theme (`text`, `training`, `tasks`, `data`, `serve`), each with a `register(add)` that declares
its parsers, one small function per subcommand; the flag blocks they share are in `common`.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence

from biogpt.cli import data, serve, tasks, text, training
from biogpt.errors import BioGPTError

MODULES = (text, training, tasks, data, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biogpt",
        description="BioGPT for biomedical text: tokenize, generate, score, convert checkpoints, "
        "fine-tune, predict and evaluate tasks.",
        epilog="Run `biogpt COMMAND --help` for the flags and examples of each command. In the "
        "examples, `$` starts a command, the lines after it show what it prints, and `...` "
        "stands for what varies. They use the built-in model `mini`; the task examples also "
        "need the datasets (--data).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(
        name: str, func: Callable[[argparse.Namespace], None], help: str, examples: str
    ) -> argparse.ArgumentParser:
        """A subcommand that runs `func(args)`; `examples` is a shell session (`# comment`,
        `$ command`, then what it prints), shown under --help and run by tests/test_cli.py."""
        command = subparsers.add_parser(
            name,
            help=help,
            description=help,
            epilog="examples:\n" + textwrap.indent(examples.rstrip("\n"), "  "),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.set_defaults(func=func)
        return command

    for module in MODULES:
        module.register(add_command)
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
