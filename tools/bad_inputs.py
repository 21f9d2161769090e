#!/usr/bin/env python3
"""Bad inputs for the `biogpt` command line, and a table of what it does with each.

    python tools/bad_inputs.py

The command line promises that a user's mistake (a bad flag value, a missing or broken file,
odd text) ends with one line on stderr, `biogpt CMD: error: ...` (or argparse's usage error,
whose last line reads the same), and exit status 2; never a Python traceback. This script
runs a curated list of about a hundred such mistakes and prints a Markdown table:

    | command line (shortened) | exit status | what it prints |

"What it prints" is, for exit status 2, the `biogpt CMD: error: ...` line (argparse's
`usage:` lines and any notes before it skipped), else the first line on stderr, else the
first line on stdout. Below the table, the inputs that broke the promise are listed again,
as `problem` words it. Most inputs run in this process through `biogpt.cli.main(argv)`;
those that need real file descriptors (stdin or stdout closed, a broken pipe, Ctrl-C) run
`python -m biogpt` under bash.

tests/test_cli_fuzz.py generates a few hundred more from the parser's own flags; both use the
helpers here:

- `make_workspace`: good inputs (a small data root, a tiny model with the released
  vocabulary, a fine-tuned task model, token shards) and labelled bad files;
- `base_invocations`: one valid, quick invocation (or two) of every command;
- `run_in_process`: one invocation through `main`, stdin fed from bytes, output captured, and
  interrupted as Ctrl-C would be if still running after `DEADLINE_S`;
- `problem`: how an outcome breaks the promise, or None.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SEED = 1729  # of the random bytes here and of the test's choice of values

# A case still running after this long has passed the command's checks and is doing the real
# work (generating, training); it is interrupted as Ctrl-C would be, and must then exit 130.
DEADLINE_S = 3.0
# The table's few cases may run longer (mini on a busy machine): "interrupted" tells little.
TABLE_DEADLINE_S = 10.0

# A tiny model with the released vocabulary: training, predicting and converting it take a
# fraction of a second, where the built-in `mini` (14M parameters) takes seconds.
SMALL_MODEL = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)

# Our own small corpus (learn-vocab, binarize, pretrain): biomedical sentences, one a record.
SENTENCES = (
    "Aspirin inhibits platelet aggregation by acetylating cyclooxygenase.",
    "Metformin lowers hepatic glucose production in type 2 diabetes.",
    "Cisplatin-induced nephrotoxicity was seen in two patients.",
    "The tumour suppressor p53 is mutated in half of human cancers.",
    "Remdesivir inhibited viral replication in Vero E6 cells.",
    "Statins reduce low-density lipoprotein cholesterol.",
    "Warfarin interacts with many drugs that induce cytochrome P450 enzymes.",
    "Interleukin-6 levels fell after treatment with tocilizumab.",
)

# What a pretraining run of the tiny model on those shards reads: one update of 2 blocks.
PRETRAIN_TOML = """\
preset = "biogpt-mini"
tokens_per_sample = 32
blocks_per_batch = 2
tokens_per_update = 64
max_updates = 1
valid_every = 0
device = "cpu"

[model]
hidden_size = 16
num_layers = 1
num_heads = 2
intermediate_size = 32
"""


# --------------------------------------------------------------------------------------------
# Running one invocation
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one invocation did: its exit status, or the exception that escaped `main`."""

    argv: list[str]
    status: int | None  # None: an exception other than SystemExit escaped main
    stdout: str
    stderr: str
    error: BaseException | None = None
    seconds: float = 0.0
    interrupted: bool = False  # stopped at DEADLINE_S


class _KeptBytes(io.BytesIO):
    """A buffer that outlives the command closing the stream over it."""

    def close(self) -> None:
        pass


def _text_stream(data: bytes = b"", errors: str = "strict") -> io.TextIOWrapper:
    """A text stream over bytes in UTF-8. Python's own are strict in a UTF-8 locale, but for
    stderr, which writes what it cannot encode as backslash escapes."""
    return io.TextIOWrapper(_KeptBytes(data), encoding="utf-8", errors=errors, write_through=True)


def _written(stream: io.TextIOWrapper) -> str:
    with contextlib.suppress(ValueError):
        stream.flush()
    return stream.buffer.getvalue().decode("utf-8", "replace")


@contextlib.contextmanager
def _deadline(seconds: float | None) -> Iterator[list[bool]]:
    """Raise KeyboardInterrupt (what Ctrl-C raises) in this thread after `seconds`; the list
    yielded holds True once it has."""
    fired: list[bool] = []
    if not seconds:
        yield fired
        return

    def interrupt(signum: int, frame: object) -> None:
        fired.append(True)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def exit_status(code: object) -> int:
    """The status a process exits with for `SystemExit(code)`."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def run_in_process(
    argv: Sequence[str],
    stdin: bytes = b"",
    cwd: Path | None = None,
    deadline_s: float | None = DEADLINE_S,
) -> Outcome:
    """`biogpt.cli.main(argv)` with `stdin` as standard input (never the terminal), stdout and
    stderr captured, in `cwd` (so that relative paths land there), interrupted after
    `deadline_s`."""
    from biogpt.cli import main

    saved = sys.stdin, sys.stdout, sys.stderr, Path.cwd()
    sys.stdin, sys.stdout = _text_stream(stdin), _text_stream()
    sys.stderr = _text_stream(errors="backslashreplace")
    out, err = sys.stdout, sys.stderr
    status, error, began = None, None, time.perf_counter()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with _deadline(deadline_s) as fired:
            try:
                status = main(list(argv))
            except SystemExit as exit_:
                status = exit_status(exit_.code)
    except BaseException as leaked:  # whatever leaves main is the finding
        error = leaked
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved[:3]
        os.chdir(saved[3])
    return Outcome(
        list(argv),
        status,
        _written(out),
        _written(err),
        error,
        time.perf_counter() - began,
        bool(fired),
    )


def run_shell(script: str, cwd: Path, timeout_s: float = 120) -> Outcome:
    """A bash script that runs `python -m biogpt` with real descriptors (closed, a pipe);
    `$BIOGPT` in it stands for that command. The script's status is the outcome's."""
    command = f"{shlex.quote(sys.executable)} -m biogpt"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    began = time.perf_counter()
    done = subprocess.run(
        ["bash", "-c", script.replace("$BIOGPT", command)],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=timeout_s,
    )
    return Outcome(
        ["bash", "-c", script],
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
        seconds=time.perf_counter() - began,
    )


def problem(outcome: Outcome) -> str | None:
    """How the outcome breaks the promise (an exception escaped main, a status other than 0,
    2 or 130, a traceback on stderr, status 2 without a closing `biogpt ...` line), or None."""
    if outcome.error is not None:
        return f"{type(outcome.error).__name__}: {first_line(str(outcome.error))}"
    if outcome.status not in (0, 2, 130):
        return f"exit status {outcome.status}: {said(outcome)}"
    if "Traceback (most recent call last)" in outcome.stderr:
        return f"a traceback on stderr (exit {outcome.status}): {last_traceback_line(outcome)}"
    lines = outcome.stderr.strip().splitlines()
    if outcome.status == 2 and not (lines and lines[-1].startswith("biogpt")):
        return f"exit status 2, stderr ends {lines[-1] if lines else '(nothing)'!r}"
    return None


def first_line(text: str, limit: int = 300) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def last_traceback_line(outcome: Outcome) -> str:
    """The exception line that ends the last traceback on stderr."""
    after = outcome.stderr.rsplit("Traceback (most recent call last)", 1)[1]
    lines = [line for line in after.splitlines() if line and not line.startswith(" ")]
    return first_line(lines[-1] if lines else after)


def said(outcome: Outcome) -> str:
    """The line that tells what happened (see the module docstring)."""
    if outcome.error is not None:
        return f"{type(outcome.error).__name__}: {first_line(str(outcome.error))}"
    if "Traceback (most recent call last)" in outcome.stderr:
        return last_traceback_line(outcome)
    lines = outcome.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("biogpt") and ": error:" in line]
    if outcome.status == 2 and errors:
        return errors[-1]
    if lines:
        return lines[0]
    out = outcome.stdout.strip().splitlines()
    return f"(stdout) {out[0]}" if out else "(nothing)"


# --------------------------------------------------------------------------------------------
# Good inputs and bad files
# --------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    """Inputs made once under `root`; the fields that come from the shared datasets are None
    without them."""

    root: Path
    small_model: Path  # SMALL_MODEL, random weights, the released vocabulary
    corpus: Path  # JSONL of SENTENCES
    shards: Path  # the corpus binarized with the released vocabulary
    pretrain_config: Path  # PRETRAIN_TOML
    prompts: Path  # JSONL of {"prompt"}
    texts: Path  # JSONL of {"id", "text"}
    bad: dict[str, str]  # label -> a bad file or directory (see make_bad_files)
    data: Path | None = None  # BC5CDR cut to 2 documents a split
    task_model: Path | None = None  # the small model fine-tuned on it for one update
    predictions: Path | None = None  # the gold answers of its test split
    # The model of the score and generate bases: the built-in one; the fuzz test, which runs
    # them hundreds of times, sets the small model (mini's load checks 14M weights).
    text_model: str = "mini"
    outputs: int = 0  # paths handed out by `output`

    def fresh(self, name: str = "case") -> Path:
        """A new empty directory (a case's working directory: relative paths land there)."""
        path = Path(self.output(name))
        path.mkdir()
        return path

    def output(self, name: str) -> str:
        """A new path (not made) in a folder that exists, for an output a command writes."""
        self.outputs += 1
        folder = self.root / "out"
        folder.mkdir(exist_ok=True)
        return str(folder / f"{self.outputs:05d}-{name}")


def write_jsonl(path: Path, records: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def make_bad_files(folder: Path, small_model: Path) -> dict[str, str]:
    """Files and directories that are wrong for whatever flag reads them, by label."""
    folder.mkdir(parents=True)
    rng = random.Random(SEED)
    bad: dict[str, str] = {}

    def put(label: str, name: str, content: bytes | None) -> None:
        path = folder / name
        if content is not None:
            path.write_bytes(content)
        bad[label] = str(path)

    put("missing path", "no-such-file.jsonl", None)
    (folder / "a-directory").mkdir()
    bad["directory"] = str(folder / "a-directory")
    put("file, not a directory", "a-file.txt", b"Aspirin inhibits platelet aggregation.\n")
    put("random bytes", "random.bin", rng.randbytes(4096))
    put("empty file", "empty.jsonl", b"")
    put("invalid UTF-8", "latin-1.jsonl", b'{"text": "caf\xe9"}\n\xff\xfe\n')
    put("JSONL: array", "array.jsonl", b"[1, 2, 3]\n")
    put("JSONL: number", "number.jsonl", b"42\n")
    put("JSONL: missing keys", "missing-keys.jsonl", b'{"foo": "bar"}\n')
    put(
        "JSONL: wrong types",
        "wrong-types.jsonl",
        b'{"id": [1], "text": {"a": 1}, "prompt": 7, "prediction": null, "pmid": 3.5}\n',
    )
    weights = (small_model / "model.safetensors").read_bytes()
    put("truncated .safetensors", "truncated.safetensors", weights[: len(weights) // 2])
    (folder / "alone").mkdir()  # alone: a loader that looks beside it finds nothing else
    put("config.json not JSON", "alone/config.json", b'{"hidden_size": 16,\n')
    # Model directories: the small model with one file broken.
    for label, name, broken, content in (
        ("model dir, truncated weights", "model-truncated", "model.safetensors", None),
        ("model dir, config.json not JSON", "model-bad-config", "config.json", b"{not json"),
        ("model dir, no weights", "model-no-weights", "model.safetensors", b""),
    ):
        directory = folder / name
        shutil.copytree(small_model, directory)
        if content is None:
            content = weights[: len(weights) // 2]
        if content:
            (directory / broken).write_bytes(content)
        else:
            (directory / broken).unlink()
        bad[label] = str(directory)
    return bad


def small_data_root(root: Path, data: Path, documents: int = 2) -> Path:
    """BC5CDR with the first `documents` of each split, and the split-level name tables."""
    (root / "bc5cdr").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        records = json.loads((data / "bc5cdr" / f"{split}.json").read_text(encoding="utf-8"))
        first = dict(list(records.items())[:documents])
        (root / "bc5cdr" / f"{split}.json").write_text(json.dumps(first), encoding="utf-8")
        shutil.copyfile(
            data / "bc5cdr" / f"{split}.entities.json", root / "bc5cdr" / f"{split}.entities.json"
        )
    return root


def make_workspace(root: Path, data: Path | None) -> Workspace:
    """The good inputs and bad files under `root` (a few seconds); `data` is the shared data
    root, None (or missing) to leave out what needs it."""
    from biogpt import BioGPT, ModelConfig, tasks
    from biogpt.corpus.readers import read_documents
    from biogpt.corpus.shards import binarize

    root.mkdir(parents=True, exist_ok=True)
    small = root / "small-model"
    BioGPT(ModelConfig.from_name("biogpt-mini", **SMALL_MODEL)).save_pretrained(small)
    corpus = write_jsonl(
        root / "corpus.jsonl",
        [{"pmid": str(1000 + i), "text": s} for i, s in enumerate(SENTENCES * 3)],
    )
    shards = root / "shards"
    binarize(
        read_documents([corpus]), "biogpt", shards, valid_fraction=0.2, workers=1, progress=False
    )
    config = root / "pretrain.toml"
    config.write_text(PRETRAIN_TOML, encoding="utf-8")
    ws = Workspace(
        root=root,
        small_model=small,
        corpus=corpus,
        shards=shards,
        pretrain_config=config,
        prompts=write_jsonl(root / "prompts.jsonl", [{"prompt": "COVID-19 is"}]),
        texts=write_jsonl(root / "texts.jsonl", [{"id": "1", "text": SENTENCES[2]}]),
        bad=make_bad_files(root / "bad", small),
    )
    if data is not None and data.is_dir():
        from biogpt.training.finetune import finetune

        ws.data = small_data_root(root / "data", data)
        ws.task_model, _ = finetune(
            "bc5cdr",
            str(small),
            root / "task-run",
            data_dir=ws.data,
            limit=1,
            validate=False,
            progress=False,
            max_updates=1,
            average_last=0,
            save_every_epoch=False,
        )
        task = tasks.get("bc5cdr")
        ws.predictions = root / "gold.jsonl"
        examples = task.load("test", ws.data)
        tasks.write_predictions(ws.predictions, {ex.id: ex.target for ex in examples})
    return ws


# --------------------------------------------------------------------------------------------
# A valid, quick invocation of each command
# --------------------------------------------------------------------------------------------

Options = dict[str, "list[str] | None"]  # flag -> its values; None for a switch


@dataclass
class Invocation:
    """A command line as flags and positionals, so that one of them can be swapped."""

    command: str
    options: Options = field(default_factory=dict)
    positionals: dict[str, list[str]] = field(default_factory=dict)  # dest -> values, in order

    def argv(self) -> list[str]:
        words = [self.command]
        for flag, values in self.options.items():
            if values is None:
                words.append(flag)
            elif len(values) == 1 and values[0].startswith("-"):
                words.append(f"{flag}={values[0]}")  # else argparse reads it as a flag
            else:
                words += [flag, *values]
        rest = [value for values in self.positionals.values() for value in values]
        if any(value.startswith("-") for value in rest):
            words.append("--")
        return words + rest


def base_invocations(ws: Workspace) -> list[Invocation]:
    """One invocation of each command (two where a command has two modes) that succeeds in
    about a second: the small models, 2 new tokens, 1 training update, 2 documents. Output
    paths are fresh directories of the workspace. Commands that need the shared data are left
    out without it."""
    lm = [ws.text_model]
    bases = [
        Invocation("tokenize", positionals={"text": ["Aspirin inhibits platelet aggregation."]}),
        Invocation(
            "convert",
            positionals={"src": [str(ws.small_model)], "dst": [ws.output("converted")]},
        ),
        Invocation("score", {"--model": lm}, {"text": ["Aspirin inhibits."]}),
        Invocation(
            "generate", {"--model": lm, "--max-new-tokens": ["2"]}, {"text": ["COVID-19 is"]}
        ),
        Invocation(
            "generate",
            {"--model": lm, "--max-new-tokens": ["2"], "--input": [str(ws.prompts)]},
        ),
        Invocation("demo", {"--text": ["Aspirin inhibits platelet aggregation."]}),
        Invocation(
            "pretrain",
            {
                "--config": [str(ws.pretrain_config)],
                "--data": [str(ws.shards)],
                "--out": [ws.output("run")],
            },
        ),
        Invocation(
            "learn-vocab",
            {"--input": [str(ws.corpus)], "--merges": ["10"], "--out": [ws.output("vocab")]},
        ),
        Invocation(
            "binarize",
            {
                "--input": [str(ws.corpus)],
                "--out": [ws.output("shards")],
                "--workers": ["1"],
                "--quiet": None,
            },
        ),
    ]
    if ws.data is None or ws.task_model is None or ws.predictions is None:
        return bases
    data, model = [str(ws.data)], [str(ws.task_model)]
    task = {"--task": ["bc5cdr"]}
    return [
        *bases,
        Invocation(
            "score",
            {**task, "--split": ["test"], "--data": data, "--predictions": [str(ws.predictions)]},
        ),
        Invocation(
            "finetune",
            {
                **task,
                "--model": [str(ws.small_model)],
                "--out": [ws.output("run")],
                "--data": data,
                "--limit": ["1"],
                "--max-updates": ["1"],
                "--no-valid": None,
                "--average-last": ["0"],
                "--save-last-only": None,
            },
        ),
        Invocation(
            "predict",
            {
                **task,
                "--model": model,
                "--split": ["test"],
                "--data": data,
                "--max-new-tokens": ["2"],
            },
        ),
        Invocation(
            "predict",
            {
                **task,
                "--model": model,
                "--input": [str(ws.texts)],
                "--output": [ws.output("predictions.jsonl")],
                "--max-new-tokens": ["2"],
            },
        ),
        Invocation(
            "evaluate",
            {
                **task,
                "--model": model,
                "--split": ["test"],
                "--data": data,
                "--max-new-tokens": ["2"],
                "--report": [ws.output("report.json")],
            },
        ),
        Invocation(
            "extract", {"--model": model, "--max-new-tokens": ["2"]}, {"text": [SENTENCES[2]]}
        ),
        Invocation(
            "report",
            {"--out": [ws.output("report")], "--data": data, "--bootstrap": ["10"]},
            {"inputs": [f"bc5cdr:test:{ws.predictions}"]},
        ),
        Invocation(
            "reproduce",
            {
                **task,
                "--model": [str(ws.small_model)],
                "--out": [ws.output("reproduced")],
                "--data": data,
                "--quick": None,
                "--train-limit": ["1"],
                "--test-limit": ["1"],
                "--max-new-tokens": ["2"],
            },
        ),
    ]


def base_of(ws: Workspace, command: str, flag: str = "") -> Invocation:
    """A fresh base invocation of `command`: the first that has `flag`, else the first."""
    bases = [b for b in base_invocations(ws) if b.command == command]
    if not bases:
        raise LookupError(f"no base invocation of {command} (shared data missing?)")
    return next((b for b in bases if flag in b.options), bases[0])


# --------------------------------------------------------------------------------------------
# The curated inputs
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One bad input: an argv for `main` (with bytes for stdin), or a bash script."""

    argv: list[str] = field(default_factory=list)
    stdin: bytes | None = None  # None: empty, and not shown in the table
    script: str = ""  # run by run_shell instead of main where given
    also_ok: tuple[int, ...] = ()  # statuses that keep the promise here too

    def run(self, cwd: Path) -> Outcome:
        if self.script:
            return run_shell(self.script, cwd)
        return run_in_process(self.argv, self.stdin or b"", cwd, TABLE_DEADLINE_S)

    def shown(self, root: Path) -> str:
        """The command line as a user would type it, shortened (see `shortened`)."""
        if self.script:
            return self.script.replace("$BIOGPT", "biogpt")
        line = shortened(["biogpt", *self.argv], root)
        if self.stdin is None:
            return line
        if len(self.stdin) > 24:
            return f"{line} < ({len(self.stdin):,} bytes: {self.stdin[:12]!r}…)"
        return f"{line} < {self.stdin!r}"


def with_options(base: Invocation, options: Options, drop: Sequence[str] = ()) -> list[str]:
    """`base`'s argv with `options` set (replacing its own) and the flags in `drop` left out."""
    merged = {k: v for k, v in base.options.items() if k not in drop}
    merged.update(options)
    return Invocation(base.command, merged, base.positionals).argv()


def with_texts(base: Invocation, *texts: str) -> list[str]:
    return Invocation(base.command, base.options, {"text": list(texts)} if texts else {}).argv()


def broken_checkpoint_run(ws: Workspace) -> list[str]:
    """A finetune run of one update whose checkpoint is then cut in half; the same command
    with --resume to continue it."""
    base = base_of(ws, "finetune")
    out = Path(ws.output("truncated-run"))
    argv = with_options(base, {"--out": [str(out)]})
    run_in_process(argv, deadline_s=None)
    for state in out.glob("checkpoints/*/trainer_state.pt"):
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    return [*argv, "--resume"]


def nan_model(ws: Workspace) -> str:
    """The small model with NaN in its weights."""
    import torch
    from safetensors.torch import load_file, save_file

    directory = ws.fresh("nan-model")
    shutil.copytree(ws.small_model, directory, dirs_exist_ok=True)
    weights = load_file(directory / "model.safetensors")
    first = next(iter(weights))
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, directory / "model.safetensors")
    return str(directory)


def curated_cases(ws: Workspace) -> list[Case]:
    """About a hundred bad inputs across the commands."""
    b = ws.bad

    def on(command: str, options: Options, drop: Sequence[str] = (), flag: str = "") -> list[str]:
        """A fresh base of `command` (the one with `flag`) with `options` set, `drop` out."""
        return with_options(base_of(ws, command, flag), options, drop)

    def texts(command: str, *values: str) -> list[str]:
        """A fresh base of `command` with these texts (none: it reads stdin)."""
        return with_texts(base_of(ws, command), *values)

    long_line = b"word " * 200_000 + b"\n"  # 1 MB
    cases = [
        # no command, an unknown one
        Case([]),
        Case(["frobnicate"]),
        Case(["--no-such-flag"]),
        # tokenize
        Case(on("tokenize", {"--tokenizer": [b["missing path"]]})),
        Case(on("tokenize", {"--tokenizer": [b["directory"]]})),
        Case(on("tokenize", {"--tokenizer": [b["random bytes"]]})),
        Case(on("tokenize", {"--show": ["everything"]})),
        Case(texts("tokenize", "a\x00b")),
        Case(texts("tokenize", "🧬 p53 蛋白质 белок ‏עברית")),
        Case(texts("tokenize", "caf\udce9")),  # an argument that was not UTF-8
        Case(texts("tokenize", "")),
        Case(texts("tokenize"), stdin=b""),
        Case(texts("tokenize"), stdin=b"\n\n\n"),
        Case(texts("tokenize"), stdin=b"a\x00b\n\x00\n"),
        Case(texts("tokenize"), stdin=b"caf\xe9\n"),
        Case(texts("tokenize"), stdin=long_line),
        Case(script="$BIOGPT tokenize <&-"),
        Case(script="$BIOGPT tokenize Aspirin >&-"),
        # a full disk is the machine's failure, not the command line's: status 1
        Case(script="$BIOGPT tokenize Aspirin >/dev/full", also_ok=(1,)),
        # SIGPIPE's own status (128 + 13) when the reader goes: what `yes | head` does
        Case(
            script="yes Aspirin | head -n 20000 | $BIOGPT tokenize | head -n 1; "
            "exit ${PIPESTATUS[2]}",
            also_ok=(141,),
        ),
        Case(script="$BIOGPT tokenize --show ids $'caf\\xe9'"),
        # convert
        Case(["convert", b["missing path"], ws.output("out")]),
        Case(["convert", b["random bytes"], ws.output("out")]),
        Case(["convert", b["model dir, truncated weights"], ws.output("out")]),
        Case(["convert", b["model dir, config.json not JSON"], ws.output("out")]),
        Case(["convert", b["model dir, no weights"], ws.output("out")]),
        Case(["convert", b["truncated .safetensors"], ws.output("out")]),
        Case(["convert", str(ws.small_model), b["file, not a directory"]]),
        Case(["convert", str(ws.small_model), str(ws.small_model)]),
        Case(["convert", str(ws.small_model), ws.output("out"), "--dtype", "int4"]),
        Case(["convert", "mini", ws.output("out"), "--dtype", "bf16"]),
        # score
        Case(on("score", {"--model": [b["model dir, truncated weights"]]})),
        Case(on("score", {"--model": [b["config.json not JSON"]]})),
        Case(on("score", {"--tokenizer": ["biogpt-large"]})),
        Case(on("score", {"--dtype": ["fp8"]})),
        Case(on("score", {"--device": ["cuda"]})),
        Case(on("score", {"--device": ["tpu:7"]})),
        Case(on("score", {}, drop=["--model"])),
        Case(texts("score", "")),
        Case(texts("score", "a\x00b")),
        Case(texts("score"), stdin=long_line),
        # generate
        Case(on("generate", {"--batch-size": ["0"]})),
        Case(on("generate", {"--max-new-tokens": ["-1"]})),
        Case(on("generate", {"--max-new-tokens": ["0"]})),
        Case(on("generate", {"--num-beams": ["0"]})),
        Case(on("generate", {"--temperature": ["nan"], "--sample": None})),
        Case(on("generate", {"--temperature": ["0"], "--sample": None})),
        Case(on("generate", {"--top-p": ["1e400"], "--sample": None})),
        Case(on("generate", {"--top-k": ["5"]})),
        Case(on("generate", {"--repetition-penalty": ["-inf"]})),
        Case(on("generate", {"--length-penalty": ["nan"], "--num-beams": ["2"]})),
        Case(on("generate", {"--seed": ["9" * 40], "--sample": None})),
        Case(on("generate", {"--seed": ["-1"], "--sample": None})),
        Case(on("generate", {"--early-stopping": ["maybe"]})),
        Case(on("generate", {"--min-new-tokens": ["5"], "--max-new-tokens": ["2"]})),
        Case(on("generate", {"--num-return-sequences": ["3"]})),
        Case(on("generate", {"--stream": None, "--json": None})),
        Case(on("generate", {"--stream": None, "--num-beams": ["2"]})),
        Case(on("generate", {"--device": ["cuda"]})),
        Case(on("generate", {"--dtype": ["int8"]})),
        Case(on("generate", {"--model": [nan_model(ws)]})),
        Case(on("generate", {"--input": [str(ws.prompts)]})),  # --input and a prompt
        Case(on("generate", {"--input": [b["JSONL: array"]]}, flag="--input")),
        Case(on("generate", {"--input": [b["JSONL: number"]]}, flag="--input")),
        Case(on("generate", {"--input": [b["JSONL: missing keys"]]}, flag="--input")),
        Case(on("generate", {"--input": [b["JSONL: wrong types"]]}, flag="--input")),
        Case(on("generate", {"--input": [b["invalid UTF-8"]]}, flag="--input")),
        Case(on("generate", {"--input": [b["empty file"]]}, flag="--input")),
        Case(on("generate", {"--input": [b["directory"]]}, flag="--input")),
        Case(texts("generate", "🧬 p53 蛋白质 белок")),
        Case(texts("generate", "\x00")),
        Case(texts("generate"), stdin=b"\n"),
        Case(texts("generate"), stdin=b"COVID-19 is\n\nMetformin is\n"),
        Case(texts("generate"), stdin=long_line),
        Case(on("generate", {"--truncate": None, "--max-new-tokens": ["1"]}), stdin=long_line),
        Case(script="$BIOGPT generate --model mini --max-new-tokens 2 <&-"),
        # demo
        Case(on("demo", {"--text": [""]})),
        Case(on("demo", {"--text": ["caf\udce9"]})),
        Case(script="timeout --preserve-status -s INT 6 $BIOGPT demo"),  # Ctrl-C
        # pretrain
        Case(on("pretrain", {"--preset": ["tiny"]})),  # shards' vocabulary > the preset's
        Case(on("pretrain", {"--preset": ["no-such-preset"]})),
        Case(on("pretrain", {"--config": [b["config.json not JSON"]]})),
        Case(on("pretrain", {"--config": [b["random bytes"]]})),
        Case(on("pretrain", {"--config": [b["directory"]]})),
        Case(on("pretrain", {"--data": [b["directory"]]})),
        Case(on("pretrain", {"--data": [b["missing path"]]})),
        Case(on("pretrain", {"--out": [b["file, not a directory"]]})),
        Case(on("pretrain", {"--max-steps": ["0"]})),
        Case(on("pretrain", {"--tokens-per-sample": ["0"]})),
        Case(on("pretrain", {"--tokens-per-sample": ["100000"]})),
        Case(on("pretrain", {"--lr": ["nan"]})),
        Case(on("pretrain", {"--blocks-per-batch": ["0"]})),
        Case(on("pretrain", {"--init-from": [b["model dir, truncated weights"]]})),
        Case(on("pretrain", {"--device": ["cuda"]})),
        Case(on("pretrain", {"--resume": None})),
        # learn-vocab and binarize
        Case(on("learn-vocab", {"--merges": ["-1"]})),
        Case(on("learn-vocab", {"--input": [b["random bytes"]]})),
        Case(on("learn-vocab", {"--input": [b["invalid UTF-8"]]})),
        Case(on("learn-vocab", {"--out": [b["file, not a directory"]]})),
        Case(on("binarize", {"--input": [b["JSONL: wrong types"]]})),
        Case(on("binarize", {"--workers": ["0"]})),
        Case(on("binarize", {"--valid-fraction": ["1.5"]})),
        Case(on("binarize", {"--shard-tokens": ["0"]})),
        Case(on("binarize", {"--exclude": [b["random bytes"]]})),
    ]
    if ws.data is None:
        return cases
    return [
        *cases,
        # finetune
        Case(on("finetune", {"--lr": ["-1"]})),
        Case(on("finetune", {"--lr": ["nan"]})),
        Case(on("finetune", {"--epochs": ["0"]})),
        Case(on("finetune", {"--max-tokens-per-batch": ["0"]})),
        Case(on("finetune", {"--tokens-per-update": ["-1"]})),
        Case(on("finetune", {"--limit": ["0"]})),
        Case(on("finetune", {"--data": [b["directory"]]})),
        Case(on("finetune", {"--model": [b["model dir, config.json not JSON"]]})),
        Case(on("finetune", {"--resume": None, "--overwrite": None})),
        Case(broken_checkpoint_run(ws)),
        # predict, evaluate, extract, score --task
        Case(on("predict", {"--input": [str(ws.texts)]})),  # --split and --input
        Case(on("predict", {}, drop=["--split"])),
        Case(on("predict", {"--split": ["dev"]})),
        Case(on("predict", {"--batch-size": ["0"]})),
        Case(on("predict", {"--input": [b["JSONL: missing keys"]]}, flag="--input")),
        Case(on("predict", {"--output": [b["directory"]]}, flag="--input")),
        Case(on("evaluate", {"--report": [str(ws.root / "no" / "such" / "report.json")]})),
        Case(on("evaluate", {"--report": [b["directory"]]})),
        Case(on("evaluate", {"--data": [b["file, not a directory"]]})),
        Case(on("extract", {"--task": ["hoc"]})),  # a model fine-tuned on another task
        Case(on("extract", {"--model": ["mini"]})),  # no prompt tokens
        Case(texts("extract"), stdin=b"\x00\n"),
        Case(on("score", {"--predictions": [b["JSONL: wrong types"]]}, flag="--task")),
        Case(on("score", {"--predictions": [b["random bytes"]]}, flag="--task")),
        Case(on("score", {}, drop=["--split"], flag="--task")),
    ]


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def shortened(words: Sequence[str], root: Path, width: int = 40) -> str:
    """A command line to read: workspace paths relative to it, long words cut."""
    prefix = str(root) + os.sep
    shown = []
    for word in words:
        word = escaped(word.replace(prefix, ""))
        if len(word) > width:
            word = f"{word[: width - 12]}…({len(word)} chars)"
        shown.append(word if re.fullmatch(r"[\w@%+=:,./-]+", word) else shlex.quote(word))
    return " ".join(shown)


def escaped(text: str) -> str:
    """`text` with control characters and lone surrogates written as Python escapes."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def cell(text: str, width: int = 100) -> str:
    """Text for a Markdown table cell: escaped (see `escaped`), `|` too; cut to `width`."""
    text = escaped(text).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def main() -> int:
    sys.path.insert(0, str(REPO / "tests"))
    from shared_data import DATA  # the tests' rule for where the shared datasets are

    os.environ["HF_HUB_OFFLINE"] = "1"  # a Hub-id-looking value must not wait on a network
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as tmp:
        ws = make_workspace(Path(tmp), DATA)
        os.environ["BIOGPT_DATA"] = str(ws.data or ws.root / "no-data")
        rows, broken = [], []
        for case in curated_cases(ws):
            outcome = case.run(ws.fresh())
            line = case.shown(ws.root)
            status = "exception" if outcome.status is None else str(outcome.status)
            if outcome.interrupted:
                status += " (interrupted)"
            rows.append(f"| `{cell(line, 110)}` | {status} | {cell(said(outcome))} |")
            if outcome.status not in case.also_ok and (why := problem(outcome)) is not None:
                broken.append(f"- `{cell(line, 110)}`: {cell(why, 200)}")
    print("| command line (shortened) | exit status | what it prints |")
    print("|---|---|---|")
    print("\n".join(rows))
    seconds = time.perf_counter() - began
    print(f"\n{len(rows)} inputs in {seconds:.0f} s; {len(broken)} broke the promise", end="")
    print(":\n" + "\n".join(broken) if broken else ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
