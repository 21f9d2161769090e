"""Every example in README.md runs, and prints what the README shows it printing.

The README's code blocks come in three kinds:
- ```pycon: a Python session. The blocks run in order, as doctests sharing one namespace,
  so a later block uses the model an earlier one loaded. `...` in a shown output stands for
  any text (doctest's ELLIPSIS), and runs of spaces count as one.
- ```console: a shell session. A `$ ...` line is a command and the lines after it, up to
  the next command, are what it prints on stdout, or on stderr for a command that prints
  only there (`...` alone: any lines; inside a line: any text; a number matches a number
  within 0.1%). Each block runs in a fresh directory, in this process (`biogpt.cli.main`),
  its commands in order.
- ```bash: commands only (the Quick start).

Two things make the shell examples quick without changing what they show. The data they
read is a cut-down copy of the shared data (`BIOGPT_DATA` points at it: a few BC5CDR
documents per split, and the first abstracts of the pretraining sample, which the workspace's
`abstracts.jsonl` holds too). And commands that train or answer run smaller than written: `SMALLER` appends
flags, and the last occurrence of a flag wins (fine-tuning runs one epoch of those few
documents, answers stop after 8 tokens, vocabulary learning stops at 300 merges,
pretraining takes 2 updates of 32-token blocks).

Commands the test never runs are listed in `NOT_RUN`, word for word, each with the reason;
a block with a command this test cannot run and that is not listed there fails.
"""

from __future__ import annotations

import doctest
import json
import math
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from shared_data import DATA, NO_DATA

from biogpt.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Shell commands the test does not run, word for word as the README writes them (comments
# aside), and why.
NOT_RUN: dict[str, str] = {
    "make demo": "builds .venv first; `biogpt demo` itself is run by tests/test_cli.py",
    "make test": "runs the test suite, this test included",
    "biogpt convert microsoft/biogpt biogpt-hf": "downloads the released weights from the "
    "Hugging Face Hub: needs the network, which tests never use",
    "biogpt serve --model mini --model bc5cdr=runs/bc5cdr/averaged": "serves until stopped; "
    "tests/test_cli.py starts `serve`'s examples for real and tests/test_serve*.py call it",
    "torchrun --nproc_per_node 8 -m biogpt pretrain --data shards --out runs/pt "
    "--preset biogpt --dtype bf16": "pretrains the 347M model on 8 GPUs for days; "
    "tests/test_cli.py runs pretraining under torchrun on 2 CPU processes",
}

# Flags appended to a command (the last occurrence wins), so that it runs in seconds.
SMALLER: dict[str, list[str]] = {
    "finetune": ["--epochs", "1", "--no-valid"],
    "evaluate": ["--max-new-tokens", "8"],
    "predict": ["--max-new-tokens", "8"],
    "extract": ["--max-new-tokens", "8"],
    "mine": ["--max-new-tokens", "8"],
    "learn-vocab": ["--merges", "300"],
    "pretrain": ["--max-updates", "2", "--tokens-per-sample", "32", "--blocks-per-batch", "2",
                 "--tokens-per-update", "128", "--valid-every", "0"],
}  # fmt: skip

# Blocks that take over about 20 s on a busy 2-core machine, by their first command (marked
# slow, left out of `make test`). None does at present: the largest, the task and pretraining
# blocks, take 10-20 s there.
SLOW: dict[str, str] = {}

SMALL_SPLIT = 3  # BC5CDR documents per split in the cut-down data root
SMALL_CORPUS = 300  # abstracts in abstracts.jsonl


# --------------------------------------------------------------------------------------------
# Reading the README
# --------------------------------------------------------------------------------------------


@dataclass
class Block:
    """One fenced code block of the README."""

    kind: str  # the fence's language: pycon, console, bash, ...
    text: str
    line: int  # the README line of the block's first line

    def __str__(self) -> str:
        return f"README.md:{self.line}"


@dataclass
class Command:
    """One command of a shell block and the lines shown as its output."""

    line: str  # as written, continuation lines joined
    block: Block
    shows: list[str] = field(default_factory=list)

    @property
    def words(self) -> list[str]:
        return shlex.split(self.line, comments=True)

    def __str__(self) -> str:
        return f"{self.block}: {self.line}"


def readme_blocks(kind: str | None = None) -> list[Block]:
    """The README's fenced code blocks, in order (of one kind, if given)."""
    blocks: list[Block] = []
    current: Block | None = None
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                current = Block(line[3:].strip(), "", number + 1)
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.text += line + "\n"
    assert current is None, f"README.md:{current.line}: unclosed code block"
    return [b for b in blocks if kind is None or b.kind == kind]


def commands_of(block: Block) -> list[Command]:
    """The commands of a shell block: in a console block the `$ ` lines, each followed by
    what it prints; in a bash block every line that is not a comment."""
    commands: list[Command] = []
    lines = iter(block.text.splitlines())
    for raw in lines:
        line = raw.strip()
        if block.kind == "bash":
            if line and not line.startswith("#"):
                commands.append(Command(line, block))
            continue
        if line.startswith("$ "):
            line = line[2:]
            while line.endswith("\\"):
                line = line[:-1].rstrip() + " " + next(lines).strip()
            commands.append(Command(line, block))
        elif line:
            assert commands, f"{block}: output before any command: {line}"
            commands[-1].shows.append(line)
    return commands


def reason_not_run(command: Command) -> str | None:
    for line, reason in NOT_RUN.items():
        if command.words == shlex.split(line):
            return reason
    return None


def shell_blocks() -> list[Block]:
    return [b for b in readme_blocks() if b.kind in ("console", "bash")]


def block_id(block: Block) -> str:
    first = commands_of(block)[0] if block.kind != "pycon" else None
    words = " ".join(first.words[:2]) if first else block.kind
    return f"line{block.line}-{words}"


def with_marks(block: Block):
    first = commands_of(block)[0].line if block.kind != "pycon" else None
    marks = [pytest.mark.slow] if first in SLOW else []
    return pytest.param(block, id=block_id(block), marks=marks)


# --------------------------------------------------------------------------------------------
# Comparing what a command printed with what the README shows
# --------------------------------------------------------------------------------------------

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalized(text: str) -> str:
    """One line per line (a progress bar's carriage returns too), spaces collapsed."""
    lines = text.replace("\r", "\n").splitlines()
    return "".join(" ".join(line.split()) + "\n" for line in lines if line.strip())


def shown_pattern(shows: list[str]) -> re.Pattern[str]:
    """The shown lines as consecutive whole lines of the output: a line `...` stands for
    any lines, `...` within a line for any text, and each number is captured."""
    parts = []
    for line in shows:
        line = " ".join(line.split())
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        pieces = []
        for text in line.split("..."):
            numbers = NUMBER.split(text)
            pieces.append(f"({NUMBER.pattern})".join(map(re.escape, numbers)))
        parts.append("[^\n]*?".join(pieces) + "\n")
    return re.compile("^" + "".join(parts), flags=re.MULTILINE)


def as_number(text: str) -> float:
    return float(text.replace(",", ""))


def prints_what_it_shows(shows: list[str], printed: str) -> bool:
    match = shown_pattern(shows).search(normalized(printed))
    if match is None:
        return False
    wanted = [as_number(n) for line in shows for n in NUMBER.findall(line)]
    got = [as_number(n) for n in match.groups()]
    return all(
        math.isclose(w, g, rel_tol=1e-3, abs_tol=1e-3) for w, g in zip(wanted, got, strict=True)
    )


def test_the_comparison_itself() -> None:
    shows = ["tokens 5 log-likelihood -33.7034 perplexity 846.1433", "...", "done ... s"]
    printed = "x\ntokens  5  log-likelihood -33.70341 perplexity 846.2\nmore\ndone in 2 s\n"
    assert prints_what_it_shows(shows, printed)
    assert not prints_what_it_shows(shows, printed.replace("846.2", "851.0"))
    assert not prints_what_it_shows(["COVID</w>/4805 -/9"], "COVID</w>/4805 @-@</w>/9\n")


# --------------------------------------------------------------------------------------------
# What the examples read
# --------------------------------------------------------------------------------------------


def first_abstracts() -> list[str]:
    """The first `SMALL_CORPUS` lines of the pretraining sample's abstracts.jsonl."""
    with open(DATA / "pretrain" / "abstracts.jsonl", encoding="utf-8") as f:
        return [next(f) for _ in range(SMALL_CORPUS)]


def small_data_root(root: Path) -> Path:
    """BC5CDR with the first documents of each split and the split-level name tables, and
    pretrain/abstracts.jsonl with the first abstracts."""
    (root / "pretrain").mkdir(parents=True)
    (root / "pretrain" / "abstracts.jsonl").write_text("".join(first_abstracts()), "utf-8")
    (root / "bc5cdr").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        documents = json.loads((DATA / "bc5cdr" / f"{split}.json").read_text(encoding="utf-8"))
        first = dict(list(documents.items())[:SMALL_SPLIT])
        (root / "bc5cdr" / f"{split}.json").write_text(json.dumps(first), encoding="utf-8")
        name_tables = f"{split}.entities.json"
        shutil.copyfile(DATA / "bc5cdr" / name_tables, root / "bc5cdr" / name_tables)
    return root


def small_corpus(workspace: Path) -> None:
    """abstracts.jsonl (the first abstracts of the pretraining sample) and test-pmids.txt
    (those of them that are evaluation test documents)."""
    lines = first_abstracts()
    (workspace / "abstracts.jsonl").write_text("".join(lines), encoding="utf-8")
    test = [json.loads(line)["pmid"] for line in lines if json.loads(line)["split"] == "test"]
    (workspace / "test-pmids.txt").write_text("".join(p + "\n" for p in test), encoding="utf-8")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    if not DATA.is_dir():
        pytest.skip(NO_DATA)
    return small_data_root(tmp_path_factory.mktemp("data"))


def needs_data(block: Block) -> bool:
    return any(word in block.text for word in ("BIOGPT_DATA", "--task", "abstracts.jsonl"))


# --------------------------------------------------------------------------------------------
# The README itself
# --------------------------------------------------------------------------------------------


def test_readme_is_for_users() -> None:
    """Short, and free of lab notes: no sessions, no lettered runs."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    assert not re.search(r"\bsessions?\b", text, flags=re.IGNORECASE)
    assert not re.search(r"\bruns? [A-Z](?:\b|-[A-Z]\b)", text)


def test_quick_start_is_make_demo_and_make_test() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in shell_blocks() if f"```bash\n{b.text}```" in section]
    assert len(blocks) == 1, "the Quick start holds one block of commands"
    assert [c.words for c in commands_of(blocks[0])] == [["make", "demo"], ["make", "test"]]


def test_every_command_not_run_is_in_the_readme() -> None:
    """NOT_RUN names commands the README has (and not others, which would hide nothing)."""
    commands = [c.words for b in shell_blocks() for c in commands_of(b)]
    for line in NOT_RUN:
        assert shlex.split(line) in commands, f"NOT_RUN lists a command the README lacks: {line}"


# --------------------------------------------------------------------------------------------
# Running the examples
# --------------------------------------------------------------------------------------------

PYCON = readme_blocks("pycon")
_session: dict = {}  # the Python session the pycon blocks share
_ran: set[int] = set()


def run_pycon(block: Block) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block.text, _session, str(block), str(README), block.line - 1)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    result = runner.run(test, out=report.append, clear_globs=False)
    _session.update(test.globs)  # a DocTest runs in a copy of the namespace it is given
    assert result.failed == 0, "".join(report)
    _ran.add(block.line)


@pytest.mark.parametrize("block", [with_marks(b) for b in PYCON])
def test_python_examples(block: Block, request, monkeypatch) -> None:
    if any(needs_data(b) for b in PYCON if b.line <= block.line and b.line not in _ran):
        monkeypatch.setenv("BIOGPT_DATA", str(request.getfixturevalue("data_root")))
    for earlier in PYCON:  # what this block uses from the blocks before it
        if earlier.line < block.line and earlier.line not in _ran:
            run_pycon(earlier)
    run_pycon(block)


def run_command(command: Command, capsys) -> str:
    """Run a `biogpt` command of the README in this process (made smaller: `SMALLER`) and
    return what it printed on stdout, or on stderr for a command that prints only there."""
    argv = [os.path.expandvars(word) for word in command.words]
    if argv[:3] == ["python", "-m", "biogpt"]:
        argv = ["biogpt", *argv[3:]]
    assert argv[0] == "biogpt", (
        f"{command}: not a biogpt command; run it here or list it in NOT_RUN"
    )
    argv = argv[1:] + SMALLER.get(argv[1], [])
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"{command} exited with {code}: {err[-2000:]}"
    return out if out.strip() else err


@pytest.mark.parametrize("block", [with_marks(b) for b in shell_blocks()])
def test_shell_examples(block: Block, tmp_path, monkeypatch, capsys, request) -> None:
    commands = [c for c in commands_of(block) if reason_not_run(c) is None]
    if not commands:
        reasons = "; ".join(f"{c.line}: {reason_not_run(c)}" for c in commands_of(block))
        pytest.skip(f"not run: {reasons}")
    monkeypatch.chdir(tmp_path)
    if needs_data(block):
        monkeypatch.setenv("BIOGPT_DATA", str(request.getfixturevalue("data_root")))
        small_corpus(tmp_path)
    for command in commands:
        printed = run_command(command, capsys)
        if command.shows:
            assert prints_what_it_shows(command.shows, printed), (
                f"{command}\nshows:\n" + "\n".join(command.shows) + f"\nprinted:\n{printed[-3000:]}"
            )
