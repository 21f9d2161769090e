"""A few hundred bad invocations of every command, generated from the parser's own flags.

Each runs in this process through `biogpt.cli.main(argv)` and must end as the command line
promises a user's mistake ends: no exception but SystemExit leaves `main`; the exit status
is 0, 2 or 130 (interrupted); with 2, stderr's last line starts with `biogpt` (the command's
one error line, or argparse's usage error) and stderr holds no traceback. Every failure is
collected and reported in one assertion message.

The invocations, deterministic (`SEED`):
- every flag and positional of every subcommand (read from `build_parser()`, so new flags
  are covered) set on a valid base invocation of its command (`bad_inputs.base_invocations`:
  a tiny model with the released vocabulary in place of `mini`, whose load alone takes a
  second on a busy machine; 2 new tokens; 1 training update) to values from `NUMBERS`
  (typed flags), `CHOICE_WORDS` (flags with choices), `TEXTS` (the TEXT positionals) or the
  workspace's bad files (`Workspace.bad`: missing, a directory, random bytes, JSONL of the
  wrong shape, a truncated safetensors file, ...) and `TEXTS` (any other flag). Of the
  values the flag's type accepts (they reach the command) `ACCEPTED_PER_FLAG` are drawn; of
  those the parser refuses `REJECTED_PER_FLAG` (they all meet the same argparse error), the
  flag given no value at all among them;
- every switch given twice, and given a value;
- per command: unknown flags, each required flag left out, every flag of the base repeated,
  standard input variants (`STDIN`) for the commands that read it, and `CONFLICTS`.

What is left out, by rule: a value over `HUGE_WORK` on a flag that sizes the work or the
resources (its name has a word of `WORK_WORDS`: --workers, --num-beams, --max-updates, ...),
and turning on a switch of `WORK_SWITCH_WORDS` (torch.compile); they would start real work
(or a process per worker) rather than test a refusal. A case still running after
`bad_inputs.DEADLINE_S` has passed the command's checks and is doing the real work; it is
interrupted as Ctrl-C would be, and must then exit 130.

The helpers (workspace, bases, running one invocation with its own stdin and captured
output, the rule) are shared with tools/bad_inputs.py, which prints a table of curated bad
inputs. Every path a case writes is in the workspace (a pytest temporary directory), and
each case runs in a fresh directory there, so that relative paths land there too.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from shared_data import DATA

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from bad_inputs import (  # tools/ is not a package: its folder is put on sys.path
    SEED,
    Invocation,
    Workspace,
    base_invocations,
    base_of,
    make_workspace,
    problem,
    run_in_process,
    shortened,
)

from biogpt.cli import build_parser

ACCEPTED_PER_FLAG = 3
REJECTED_PER_FLAG = 1

NUMBERS = {
    "empty": "",
    "zero": "0",
    "minus one": "-1",
    "-1e9": "-1e9",
    "1e400": "1e400",
    "nan": "nan",
    "inf": "inf",
    "huge int": "9" * 40,
    "text": "abc",
}
TEXTS = {
    "empty": "",
    "zero": "0",
    "minus one": "-1",
    "nan": "nan",
    "text": "abc",
    "NUL": "a\x00b",
    "argument not UTF-8": "caf\udce9",  # what Python makes of the byte 0xe9 in argv
    "emoji and non-Latin": "🧬 p53 蛋白质 белок",
    "100k characters": "word " * 20_000,
}
# For flags with choices: near misses of a choice are made from the flag's own choices.
CHOICE_WORDS = {"empty": "", "text": "abc", "NUL": "a\x00b"}
STDIN = {
    "empty": b"",
    "blank lines": b"\n\n\n",
    "NUL bytes": b"a\x00b\n\x00\n",
    "invalid UTF-8": b"caf\xe9\n",
    "a 1 MB line": b"word " * 200_000 + b"\n",
    "CRLF": b"Aspirin\r\n",
}
HUGE_WORK = 10**6
WORK_WORDS = ("workers", "beams", "sequences", "batch", "tokens", "sample", "merges",
              "updates", "steps", "epochs", "limit")  # fmt: skip
# Switches that turn on torch.compile: tens of seconds of compiling, and compiled code that
# stays in this process for the cases after.
WORK_SWITCH_WORDS = ("compile",)
UNKNOWN = (["--no-such-flag"], ["--no-such-flag=1"])
# (command, a flag of the base to use ("": the first base), options set on it, flags left out)
CONFLICTS = (
    ("generate", "", {"--stream": None, "--json": None}, ()),
    ("generate", "", {"--stream": None, "--num-beams": ["2"]}, ()),
    ("generate", "", {"--stream": None, "--stop": ["."]}, ()),
    ("generate", "", {"--input": ["@prompts"]}, ()),  # and a positional prompt
    ("generate", "", {"--top-k": ["5"]}, ()),  # without --sample
    ("generate", "", {"--sample": None, "--num-beams": ["2"]}, ()),
    ("generate", "", {"--min-new-tokens": ["5"]}, ()),  # over --max-new-tokens 2
    ("generate", "", {"--num-return-sequences": ["3"]}, ()),  # greedy
    ("tokenize", "", {"--json": None, "--show": ["ids"]}, ()),
    ("score", "", {"--task": ["bc5cdr"]}, ()),  # --model and --task without --split
    ("score", "--task", {"--model": ["mini"]}, ()),
    ("score", "--task", {}, ("--predictions",)),
    ("convert", "", {}, ()),  # DST is SRC, below
    ("finetune", "", {"--resume": None, "--overwrite": None}, ()),
    ("finetune", "", {"--resume": None}, ()),  # nothing to resume
    ("pretrain", "", {"--resume": None, "--overwrite": None}, ()),
    ("pretrain", "", {"--init-from": ["mini"], "--preset": ["tiny"]}, ()),
    ("predict", "", {"--input": ["@texts"]}, ()),  # and --split
    ("predict", "", {}, ("--split",)),  # neither --split nor --input
    ("evaluate", "", {"--predictions": ["@report"]}, ()),  # the report's own path
    ("learn-vocab", "", {"--paragraphs": None, "--min-count": ["0"]}, ()),
    ("binarize", "", {"--exclude": ["@corpus"]}, ()),  # every document left out
)


@dataclass
class FuzzCase:
    label: str  # what is wrong, e.g. "generate --max-new-tokens = minus one"
    argv: list[str]
    stdin: bytes = b""


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def flag_name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def is_switch(action: argparse.Action) -> bool:
    return action.nargs == 0


def parser_accepts(action: argparse.Action, value: str) -> bool:
    """Whether argparse takes `value` for the flag (its type converts it, a choice)."""
    try:
        converted = action.type(value) if callable(action.type) else value
    except (ValueError, TypeError, ArithmeticError, argparse.ArgumentTypeError):
        return False
    return not action.choices or converted in action.choices


def sizes_work(action: argparse.Action, value: str) -> bool:
    """A value over HUGE_WORK on a flag that sizes the work (see the module docstring)."""
    if not any(word in flag_name(action) for word in WORK_WORDS):
        return False
    try:
        return float(value) > HUGE_WORK
    except ValueError:
        return False


def candidates(action: argparse.Action, ws: Workspace) -> dict[str, str]:
    if action.type is not None:
        return NUMBERS
    if action.choices:
        first = str(next(iter(action.choices)))
        return {**CHOICE_WORDS, "a choice upper-cased": first.upper(), "a choice cut": first[:-1]}
    if not action.option_strings and action.nargs == "*":  # texts, not files
        return TEXTS
    return {**ws.bad, **TEXTS}


def value_cases(
    ws: Workspace, command: str, action: argparse.Action, skipped: Counter
) -> list[FuzzCase]:
    """The flag (or positional) set to values drawn from its candidates."""
    flag = flag_name(action)
    rng = random.Random(f"{SEED} {command} {flag}")
    pool = candidates(action, ws)
    accepted = [k for k, v in pool.items() if parser_accepts(action, v)]
    rejected = [k for k, v in pool.items() if k not in accepted]
    skipped[command] += sum(sizes_work(action, pool[k]) for k in accepted)
    accepted = [k for k in accepted if not sizes_work(action, pool[k])]
    if action.option_strings:
        rejected.append("no value")
    chosen = rng.sample(accepted, min(ACCEPTED_PER_FLAG, len(accepted)))
    chosen += rng.sample(rejected, min(REJECTED_PER_FLAG, len(rejected)))
    cases = []
    for label in chosen:
        base = base_of(ws, command, flag)
        if label == "no value":  # last on the line, so that nothing after it is taken
            argv = [*base.argv(), action.option_strings[0]]
        elif action.option_strings:
            base.options[flag] = [pool[label]]
            argv = base.argv()
        else:
            base.positionals[action.dest] = [pool[label]]
            argv = base.argv()
        cases.append(FuzzCase(f"{command} {flag} = {label}", argv))
    return cases


def switch_cases(
    ws: Workspace, command: str, action: argparse.Action, skipped: Counter
) -> list[FuzzCase]:
    flag = flag_name(action)
    if any(word in flag for word in WORK_SWITCH_WORDS):
        skipped[command] += 1
        return [
            FuzzCase(f"{command} {flag} given a value", [*base_of(ws, command).argv(), f"{flag}=1"])
        ]
    base = base_of(ws, command, flag)
    command_word, *rest = base.argv()
    twice = (
        [command_word, flag, *rest] if flag in base.options else [command_word, flag, flag, *rest]
    )
    return [
        FuzzCase(f"{command} {flag} given twice", twice),
        FuzzCase(f"{command} {flag} given a value", [*base_of(ws, command).argv(), f"{flag}=1"]),
    ]


def command_cases(ws: Workspace, command: str, parser: argparse.ArgumentParser) -> list[FuzzCase]:
    """Unknown flags, each required flag left out, the base's flags repeated, stdin."""
    cases = [
        FuzzCase(f"{command} unknown flag {' '.join(extra)}", base_of(ws, command).argv() + extra)
        for extra in UNKNOWN
    ]
    for action in parser._actions:
        base = base_of(ws, command)
        if action.required and action.option_strings and flag_name(action) in base.options:
            del base.options[flag_name(action)]
            cases.append(FuzzCase(f"{command} without {flag_name(action)}", base.argv()))
        elif action.required and action.dest in base.positionals:
            del base.positionals[action.dest]
            cases.append(FuzzCase(f"{command} without {action.dest.upper()}", base.argv()))
    base = base_of(ws, command)
    options = Invocation(command, base.options).argv()[1:]
    argv = base.argv()
    cases.append(FuzzCase(f"{command} every flag twice", argv[:1] + options + argv[1:]))
    reads_stdin = any(a.dest == "text" and a.nargs == "*" for a in parser._actions)
    if reads_stdin:
        for label, data in STDIN.items():
            base = base_of(ws, command)
            base.positionals.clear()
            cases.append(FuzzCase(f"{command} stdin: {label}", base.argv(), data))
    return cases


def conflict_cases(ws: Workspace, commands: set[str]) -> list[FuzzCase]:
    named = {"@prompts": ws.prompts, "@texts": ws.texts, "@corpus": ws.corpus}
    cases = []
    for command, flag, options, drop in CONFLICTS:
        if command not in commands or (flag and flag not in base_of(ws, command, flag).options):
            continue
        base = base_of(ws, command, flag)
        for name in drop:
            base.options.pop(name, None)
        for name, values in options.items():
            if values and values[0] == "@report":
                values = base.options["--report"]
            elif values:
                values = [str(named.get(v, v)) for v in values]
            base.options[name] = values
        if command == "convert":
            base.positionals["dst"] = base.positionals["src"]
        label = " ".join(f"{k} {' '.join(v or [])}".strip() for k, v in options.items())
        cases.append(FuzzCase(f"{command} conflict: {label or 'DST = SRC'}", base.argv()))
    return cases


def generate_cases(ws: Workspace, skipped: Counter) -> list[FuzzCase]:
    commands = {b.command for b in base_invocations(ws)}
    cases = [FuzzCase("no command", []), FuzzCase("unknown command", ["frobnicate"])]
    for command, parser in subcommands().items():
        if command not in commands:  # needs the shared data
            continue
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if is_switch(action):
                cases += switch_cases(ws, command, action, skipped)
            else:
                cases += value_cases(ws, command, action, skipped)
        cases += command_cases(ws, command, parser)
    return cases + conflict_cases(ws, commands)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = make_workspace(tmp_path_factory.mktemp("fuzz"), DATA)
    ws.text_model = str(ws.small_model)  # a case that happens to be valid takes no time
    return ws


def test_every_bad_invocation_ends_in_one_error_line(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hub-id-looking value: no network wait
    # A command that falls back to $BIOGPT_DATA finds the small data root, not the full one.
    monkeypatch.setenv("BIOGPT_DATA", str(workspace.data or workspace.root / "no-data"))
    skipped: Counter = Counter()
    cases = generate_cases(workspace, skipped)
    began = time.perf_counter()
    failures, statuses, slowest = [], Counter(), []
    for case in cases:
        outcome = run_in_process(case.argv, case.stdin, workspace.fresh())
        statuses["exception" if outcome.status is None else outcome.status] += 1
        statuses["interrupted at the deadline"] += outcome.interrupted
        slowest.append((outcome.seconds, case.label))
        if (why := problem(outcome)) is not None:
            argv = shortened(["biogpt", *case.argv], workspace.root)
            failures.append(f"- {case.label}\n    {argv}\n    {why}")
    seconds = time.perf_counter() - began
    print(
        f"\n{len(cases)} bad invocations in {seconds:.0f} s; outcomes {dict(statuses)}; "
        f"left out by the work rule: {sum(skipped.values())}; slowest: "
        + ", ".join(f"{label} ({s:.1f} s)" for s, label in sorted(slowest)[-3:])
    )
    if not DATA.is_dir():
        print("(the commands that need the shared data were left out)")
    assert not failures, f"{len(failures)} of {len(cases)} bad invocations broke the promise:\n" + (
        "\n".join(failures)
    )
