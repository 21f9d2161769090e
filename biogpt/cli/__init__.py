"""The `biogpt` command line: each subcommand parses its flags and calls one library function.

Subcommands live in modules by theme (`text`, `training`, `tasks`, `data`, `serve`, `mine`), each with a
`register(add)` that declares its parsers, one small function per subcommand; the flag
blocks they share are in `common`.

What a command says when it cannot do its work, and its exit status:

- 2, one line `biogpt CMD: error: MESSAGE` on stderr: a mistake the user can fix in the
  command line or its inputs: a bad flag value (argparse's own errors too, without the
  usage dump), a missing, unreadable or malformed file, standard output or input closed
  where the command needs it (`>&-`, `<&-`: Python then makes `sys.stdout` None and
  every print vanishes, so the command refuses to start). The library raises these as
  `BioGPTError`. An `OSError` that escapes the library's checks and names a path the user
  controls (not found, permission denied, is a directory, ...) gets the same line, naming
  `err.filename`.
- 1, the same one line: an `OSError` of the machine rather than the command line (disk
  full, an I/O error, too many open files): retrying elsewhere may help, editing the
  command will not.
- 141 (128 + SIGPIPE), silent: the reader of stdout went away (`biogpt tokenize ... |
  head -1`). It is the status every program stopped by SIGPIPE has, so a shell with `set
  -o pipefail` sees biogpt as it sees `cat` or `grep` there, and a script can tell that the
  output was cut short; without pipefail nobody sees it.
- 130: interrupted (Ctrl-C).

Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import NoReturn

from biogpt.cli import data, mine, report, reproduce, serve, tasks, text, training
from biogpt.errors import BioGPTError

MODULES = (text, training, tasks, data, serve, mine, reproduce, report)

# OSError numbers that a user fixes by pointing the command elsewhere (exit 2); the others
# are the machine's (exit 1).
USER_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EEXIST,
        errno.ENOTEMPTY,
        errno.ENAMETOOLONG,
        errno.ELOOP,
        errno.EROFS,
    }
)
EXIT_BROKEN_PIPE = 128 + 13  # 13 = SIGPIPE on every platform Python supports


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but an error is one line (`biogpt CMD: error: ...`), as every
    other error of the command line is, instead of the usage lines and then the message."""

    def error(self, message: str, prog: str | None = None) -> NoReturn:
        prog = prog or self.prog
        self.exit(2, f"{prog}: error: {message} (see {prog} --help)\n")

    def parse_args(  # type: ignore[override]  # argparse's overloads, in one signature
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """As argparse's, but an unknown flag is reported by the subcommand it was given to
        (argparse leaves it to the top parser: `biogpt: error: ...`)."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self.error(f"unrecognized arguments: {' '.join(extra)}", prog)
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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


def os_error_message(err: OSError) -> str:
    """One line for an OSError: the path(s) it names, then the system's reason."""
    reason = err.strerror or str(err) or type(err).__name__
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def check_arguments(argv: Sequence[str]) -> None:
    """Refuse an argument no file name or text can hold: a NUL character (only a caller in
    the same process can pass one), or bytes that are not UTF-8 (Python keeps them as lone
    surrogates, which no file name or output can carry)."""
    for number, argument in enumerate(argv, start=1):
        if "\0" in argument:
            raise BioGPTError(f"argument {number} ({ascii(argument)[:60]}) holds a NUL character")
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            raise BioGPTError(
                f"argument {number} ({ascii(argument)[:60]}) is not UTF-8 text; "
                "convert it (e.g. with iconv) or set a UTF-8 locale"
            ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run `biogpt ARGV` and return its exit status (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    command = f"biogpt {args.command}"
    try:
        check_arguments(argv)
        if sys.stdout is None:
            raise BioGPTError(
                "standard output is closed, so what this command prints would be lost; "
                "redirect it instead (> FILE, or > /dev/null to discard it)"
            )
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit as "Exception ignored"
    except BioGPTError as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `biogpt tokenize ... | head -1`
        # Python flushes stdout again at exit; point it at /dev/null so that finds no pipe.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_BROKEN_PIPE
    except OSError as err:
        print(f"{command}: error: {os_error_message(err)}", file=sys.stderr)
        return 2 if err.errno in USER_ERRNOS else 1
    return 0
