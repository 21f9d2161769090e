"""The command line: every example that a `--help` shows runs and prints what it shows; the
decoding flags are `GenerationConfig`'s fields with its defaults; every flag of the first
release still parses to what it did.

How the examples run: the examples of one command run in order, as one shell session, in a
fresh directory that holds the files they read (`INPUTS`: a cut-down copy of the shared
data, a model fine-tuned from `mini` for 2 updates, ...); those that need the shared data
skip without it. Examples that train, and task answers, run smaller than written
(`SMALLER`: flags appended, the last one wins): fine-tuning takes 2 updates, pretraining 2
updates of tiny blocks on the `mini` shape, and an answer 8 tokens (an untrained model's
answers run to the task's length limit). The torchrun example runs two CPU processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from shared_data import DATA, NO_DATA

import biogpt
from biogpt import tasks
from biogpt.cli import build_parser, main
from biogpt.cli.common import generation_options
from biogpt.decoding.config import GenerationConfig

# --------------------------------------------------------------------------------------------
# The examples, read from `--help`
# --------------------------------------------------------------------------------------------


@dataclass
class HelpExample:
    """One `$ ...` command of a --help's examples and the lines shown as its output."""

    command: str  # the subcommand whose --help shows it
    line: str  # the command line as shown, its continuation lines joined
    shows: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.line


def printed_by(argv: list[str]) -> str:
    """What `biogpt ARGV` prints on stdout when it exits with status 0 (as --help does)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    return out.getvalue()


def command_names() -> list[str]:
    """The commands that `biogpt --help` lists (the lines under "COMMAND")."""
    listing = printed_by(["--help"]).split("\n  COMMAND\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^    (\S+)", listing, flags=re.MULTILINE)


def examples_of(command: str) -> list[HelpExample]:
    """The examples of `biogpt COMMAND --help`. After "examples:", a `# ...` line is a
    comment, a `$ ...` line (continued by a trailing backslash) a command, and the lines
    after a command, up to a blank line or a comment, what it prints."""
    text = printed_by([command, "--help"])
    assert "\nexamples:\n" in text, f"biogpt {command} --help shows no examples"
    examples: list[HelpExample] = []
    current: HelpExample | None = None
    lines = iter(text.split("\nexamples:\n", 1)[1].splitlines())
    for raw in lines:
        line = raw.strip()
        if line.startswith("$ "):
            while line.endswith("\\"):
                line = line[:-1].rstrip() + " " + next(lines).strip()
            current = HelpExample(command, line[2:])
            examples.append(current)
        elif not line or line.startswith("#"):
            current = None
        else:
            assert current is not None, f"{command} --help: output without a command: {line}"
            current.shows.append(line)
    return examples


def normalized(text: str) -> str:
    """One line per line (a progress bar's carriage returns too), spaces collapsed."""
    lines = text.replace("\r", "\n").splitlines()
    return "".join(" ".join(line.split()) + "\n" for line in lines if line.strip())


def shown_pattern(shows: list[str]) -> re.Pattern[str]:
    """The lines an example shows, as consecutive whole lines of its output: a line `...`
    stands for any number of lines, and `...` inside a line for any text within it."""
    parts = []
    for line in shows:
        line = " ".join(line.split())
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[^\n]*?".join(map(re.escape, line.split("..."))) + "\n")
    return re.compile("^" + "".join(parts), flags=re.MULTILINE)


# --------------------------------------------------------------------------------------------
# What the examples read, and how they are made smaller
# --------------------------------------------------------------------------------------------

SMALL_SPLIT = 3  # documents per split in the cut-down data root
SMALL_CORPUS = 300  # abstracts for learn-vocab, binarize and pretrain


def small_data_root(root: Path) -> None:
    """BC5CDR with the first documents of each split, and the split-level name tables."""
    (root / "bc5cdr").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        documents = json.loads((DATA / "bc5cdr" / f"{split}.json").read_text())
        first = dict(list(documents.items())[:SMALL_SPLIT])
        (root / "bc5cdr" / f"{split}.json").write_text(json.dumps(first))
        shutil.copyfile(
            DATA / "bc5cdr" / f"{split}.entities.json", root / "bc5cdr" / f"{split}.entities.json"
        )


def gold_predictions(path: Path) -> None:
    """The gold answers of the cut-down BC5CDR test split, as a predictions file."""
    task = tasks.get("bc5cdr")
    small_data_root(path.parent / "gold-data")
    examples = task.load("test", path.parent / "gold-data")
    tasks.write_predictions(path, {ex.id: ex.target for ex in examples})


def abstracts(path: Path) -> None:
    with open(DATA / "pretrain" / "abstracts.jsonl", encoding="utf-8") as f:
        path.write_text("".join(next(f) for _ in range(SMALL_CORPUS)), encoding="utf-8")


def evaluation_pmids(path: Path) -> None:
    """The PMIDs of the evaluation test documents among the abstracts."""
    with open(DATA / "pretrain" / "abstracts.jsonl", encoding="utf-8") as f:
        records = [json.loads(next(f)) for _ in range(SMALL_CORPUS)]
    path.write_text("".join(r["pmid"] + "\n" for r in records if r["split"] == "test"))


def token_shards(path: Path) -> None:
    from biogpt.corpus.readers import read_documents
    from biogpt.corpus.shards import binarize

    abstracts(path.parent / "corpus.jsonl")
    documents = read_documents([path.parent / "corpus.jsonl"])
    binarize(documents, "biogpt", path, valid_fraction=0.05, workers=1, progress=False)


def pretrain_config(path: Path) -> None:
    path.write_text(
        'data = "shards"\nout = "runs/from-config"\npreset = "biogpt-mini"\n'
        "tokens_per_sample = 32\nblocks_per_batch = 2\ntokens_per_update = 128\n"
        "max_updates = 2\nvalid_every = 0\n"
    )


def api_keys(path: Path) -> None:
    path.write_text("key-for-tests\n")


def prompts(path: Path) -> None:
    lines = ({"prompt": "COVID-19 is"}, {"prompt": "Metformin is a"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def texts(path: Path) -> None:
    lines = ({"id": "1", "text": "Cisplatin-induced nephrotoxicity in two patients."},)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


# name in the examples' directory -> (makes it, needs the shared data)
MAKERS: dict[str, tuple[Callable[[Path], None], bool]] = {
    "data": (small_data_root, True),
    "preds.jsonl": (gold_predictions, True),
    "abstracts.jsonl": (abstracts, True),
    "test_pmids.txt": (evaluation_pmids, True),
    "shards": (token_shards, True),
    "pretrain.toml": (pretrain_config, False),
    "prompts.jsonl": (prompts, False),
    "texts.jsonl": (texts, False),
    "keys.txt": (api_keys, False),
}
# A model that `biogpt finetune` wrote, which the task examples use: the `finetuned` fixture.
FINETUNED = "runs/bc5cdr/averaged"
# What each command's examples read.
INPUTS: dict[str, tuple[str, ...]] = {
    "score": ("data", "preds.jsonl"),
    "generate": ("prompts.jsonl",),
    "finetune": ("data",),
    "predict": ("data", "texts.jsonl", FINETUNED),
    "evaluate": ("data", FINETUNED),
    "extract": (FINETUNED,),
    "serve": (FINETUNED, "keys.txt"),
    "mine": ("texts.jsonl", FINETUNED),
    "query": ("texts.jsonl", FINETUNED),
    "export": ("texts.jsonl", FINETUNED),
    "reproduce": ("data",),
    "report": ("data", "preds.jsonl"),
    "learn-vocab": ("abstracts.jsonl",),
    "binarize": ("abstracts.jsonl", "test_pmids.txt"),
    "pretrain": ("shards", "pretrain.toml"),
}
# Flags appended to a command's examples (where an example sets one too, the last wins).
SMALLER: dict[str, tuple[str, ...]] = {
    "finetune": ("--max-updates", "2", "--no-valid"),
    "predict": ("--max-new-tokens", "8"),
    "evaluate": ("--max-new-tokens", "8"),
    "extract": ("--max-new-tokens", "8"),
    "mine": ("--max-new-tokens", "8"),
    "pretrain": ("--preset", "biogpt-mini", "--max-updates", "2", "--tokens-per-sample", "32",
                 "--blocks-per-batch", "2", "--tokens-per-update", "128", "--valid-every", "0"),
}  # fmt: skip


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> Path:
    """`mini` fine-tuned on 2 BC5CDR documents for 2 updates: a model with the task's
    prompt tokens, which the task commands need (its answers are not meant to be right)."""
    from biogpt.training.finetune import finetune

    root = tmp_path_factory.mktemp("finetune")
    small_data_root(root / "data")
    final, _ = finetune(
        "bc5cdr", "mini", root / "run", data_dir=root / "data", limit=2, validate=False,
        progress=False, max_updates=2, average_last=0, save_every_epoch=False,
    )  # fmt: skip
    return final


def make_inputs(command: str, workspace: Path, request: pytest.FixtureRequest) -> None:
    """The files that `command`'s examples read, made in `workspace`; a skip where they
    come from the shared data and it is missing."""
    workspace.mkdir(parents=True, exist_ok=True)
    for name in INPUTS.get(command, ()):
        if (workspace / name).exists():
            continue
        make, needs_shared_data = MAKERS.get(name, (None, True))
        if needs_shared_data and not DATA.is_dir():
            pytest.skip(NO_DATA)
        if name == FINETUNED:
            shutil.copytree(request.getfixturevalue("finetuned"), workspace / name)
        else:
            make(workspace / name)


def check_example(example: HelpExample, capsys: pytest.CaptureFixture[str]) -> None:
    """Run the example as written (made smaller, `SMALLER`) in the current directory: it
    exits with 0 and prints the lines it shows, on stdout (on stderr for a command that
    prints only there)."""
    argv = shlex.split(example.line) + list(SMALLER.get(example.command, ()))
    if example.command == "serve":
        code, out, err = serve_until_ready(argv, example)
    elif argv[0] == "biogpt":
        code = main(argv[1:])
        out, err = capsys.readouterr()
    else:  # torchrun ... -m biogpt ...: its own processes, the venv's torchrun
        argv[0] = str(Path(sys.executable).with_name(argv[0]))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        code, out, err = done.returncode, done.stdout, done.stderr
    assert code == 0, f"{example} exited with {code}: {err[-2000:]}"
    printed = out if out.strip() else err
    assert shown_pattern(example.shows).search(normalized(printed)), (
        f"{example}\nshows:\n" + "\n".join(example.shows) + f"\nprinted:\n{printed[-3000:]}"
    )


def serve_until_ready(argv: list[str], example: HelpExample) -> tuple[int, str, str]:
    """Start a `biogpt serve` example in its own process on a free loopback port (the shown
    port and host stand for it), wait for GET /health to say 200, then stop it as Ctrl-C
    does; (exit status, what it printed on both streams (its access log is on stdout, its
    own lines on stderr), stderr), with the shown address in place of the real one."""
    import signal
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shown_port = argv[argv.index("--port") + 1] if "--port" in argv else "8000"
    shown_host = argv[argv.index("--host") + 1] if "--host" in argv else "127.0.0.1"
    argv = [sys.executable, "-m", *argv, "--host", "127.0.0.1", "--port", str(port)]
    # The package under test, wherever it lies (not one an install may point elsewhere).
    env = {**os.environ, "PYTHONPATH": str(Path(biogpt.__file__).resolve().parents[1])}
    server = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    real = f"127.0.0.1:{port}"
    shown = f"{shown_host}:{shown_port}"
    out, err = out.replace(real, shown), err.replace(real, shown)
    return server.returncode, out + err, err


def launched_elsewhere(example: HelpExample) -> bool:
    return not example.line.startswith("biogpt ")


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

COMMANDS = command_names()


def test_every_command_shows_examples_of_itself() -> None:
    assert set(FIRST_RELEASE) <= set(COMMANDS)
    for command in COMMANDS:
        examples = examples_of(command)
        assert examples, command
        # Some show first what makes their input (`query` and `export` a `mine` run).
        named = [shlex.split(e.line) for e in examples]
        assert all("biogpt" in words for words in named), command
        assert any(words[words.index("biogpt") + 1] == command for words in named), command


@pytest.mark.parametrize("command", COMMANDS)
def test_help_examples_print_what_they_show(
    command: str, tmp_path, monkeypatch, capsys, request
) -> None:
    monkeypatch.chdir(tmp_path)
    make_inputs(command, tmp_path, request)
    for example in examples_of(command):
        if launched_elsewhere(example):
            continue  # test_help_examples_launched_by_torchrun
        check_example(example, capsys)


@pytest.mark.skipif(
    not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun not installed"
)
def test_help_examples_launched_by_torchrun(tmp_path, monkeypatch, capsys, request) -> None:
    """The torchrun examples, on CPU processes, at a free rendezvous port (torchrun reads its
    flags from PET_* variables too)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("PET_MASTER_PORT", str(probe.getsockname()[1]))
    ran = 0
    for command in COMMANDS:
        for example in filter(launched_elsewhere, examples_of(command)):
            make_inputs(command, tmp_path / command, request)
            monkeypatch.chdir(tmp_path / command)
            check_example(example, capsys)
            ran += 1
    assert ran


def test_decoding_flags_default_to_generation_config() -> None:
    """The generate flags are GenerationConfig's fields: unset, they are its defaults."""
    args = build_parser().parse_args(["generate", "--model", "mini"])
    assert GenerationConfig(**generation_options(args)) == GenerationConfig()
    for word, value in (("true", True), ("false", False), ("never", "never")):
        args = build_parser().parse_args(["generate", "--model", "m", "--early-stopping", word])
        assert generation_options(args)["early_stopping"] == value
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--model", "m", "--early-stopping", "maybe"])


# Every flag of the first release, each given a value, and what it parsed to then (the
# decoding flags land under their GenerationConfig field: --sample under do_sample).
FIRST_RELEASE: dict[str, tuple[str, dict]] = {
    "tokenize": (
        "--tokenizer biogpt-large --show ids --json a b",
        {"text": ["a", "b"], "tokenizer": "biogpt-large", "show": "ids", "json": True},
    ),
    "convert": (
        "src dst --dtype bf16 --overwrite --trust-pickle --no-tokenizer",
        {"src": "src", "dst": "dst", "dtype": "bf16", "overwrite": True, "trust_pickle": True,
         "no_tokenizer": True},
    ),
    "score": (
        "--model m --tokenizer t --dtype bf16 --device cpu --trust-pickle --json --task bc5cdr "
        "--split test --data d --predictions p.jsonl x",
        {"model": "m", "tokenizer": "t", "dtype": "bf16", "device": "cpu", "trust_pickle": True,
         "text": ["x"], "json": True, "task": "bc5cdr", "split": "test", "data": "d",
         "predictions": "p.jsonl"},
    ),
    "generate": (
        "--model m --tokenizer t --dtype int8 --device cpu --trust-pickle --input in.jsonl "
        "--max-new-tokens 9 --min-new-tokens 2 --num-beams 3 --length-penalty 0.5 "
        "--early-stopping never --sample --temperature 0.7 --top-k 5 --top-p 0.9 --seed 4 "
        "--repetition-penalty 1.2 --no-repeat-ngram-size 3 --num-return-sequences 2 --stop a "
        "--stop b --batch-size 4 --truncate --stream --compile-step --json x",
        {"model": "m", "tokenizer": "t", "dtype": "int8", "device": "cpu", "trust_pickle": True,
         "text": ["x"], "input": "in.jsonl", "max_new_tokens": 9, "min_new_tokens": 2,
         "num_beams": 3, "length_penalty": 0.5, "early_stopping": "never", "do_sample": True,
         "temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 4, "repetition_penalty": 1.2,
         "no_repeat_ngram_size": 3, "num_return_sequences": 2, "stop": ["a", "b"],
         "batch_size": 4, "truncate": True, "stream": True, "compile_step": True, "json": True},
    ),
    "demo": ("--text t", {"text": "t"}),
    "finetune": (
        "--task ddi --model m --out o --data d --epochs 2 --max-updates 3 --lr 0.001 --warmup 4 "
        "--tokens-per-update 100 --max-tokens-per-batch 50 --dtype bf16 --loss target --seed 5 "
        "--average-last 2 --save-last-only --limit 6 --no-valid --resume --overwrite "
        "--trust-pickle",
        {"task": "ddi", "model": "m", "out": "o", "data": "d", "epochs": 2, "max_updates": 3,
         "lr": 0.001, "warmup": 4, "tokens_per_update": 100, "max_tokens_per_batch": 50,
         "dtype": "bf16", "loss": "target", "seed": 5, "average_last": 2,
         "save_last_only": True, "limit": 6, "no_valid": True, "resume": True,
         "overwrite": True, "trust_pickle": True},
    ),
    "predict": (
        "--model m --tokenizer t --dtype fp16 --device cpu --trust-pickle --task ddi --split test "
        "--data d --batch-size 2 --max-new-tokens 7 --input i.jsonl --output o.jsonl --overwrite",
        {"model": "m", "tokenizer": "t", "dtype": "fp16", "device": "cpu", "trust_pickle": True,
         "task": "ddi", "split": "test", "data": "d", "batch_size": 2, "max_new_tokens": 7,
         "input": "i.jsonl", "output": "o.jsonl", "overwrite": True},
    ),
    "evaluate": (
        "--model m --tokenizer t --dtype bf16 --device cpu --trust-pickle --task hoc "
        "--split valid --data d --batch-size 3 --max-new-tokens 5 --report r.json "
        "--predictions p.jsonl --overwrite",
        {"model": "m", "tokenizer": "t", "dtype": "bf16", "device": "cpu", "trust_pickle": True,
         "task": "hoc", "split": "valid", "data": "d", "batch_size": 3, "max_new_tokens": 5,
         "report": "r.json", "predictions": "p.jsonl", "overwrite": True},
    ),
    "extract": (
        "--model m --tokenizer t --dtype bf16 --device cpu --trust-pickle --task ddi "
        "--max-new-tokens 5 x y",
        {"model": "m", "tokenizer": "t", "dtype": "bf16", "device": "cpu", "trust_pickle": True,
         "text": ["x", "y"], "task": "ddi", "max_new_tokens": 5},
    ),
    "learn-vocab": (
        "--input a.xml b.jsonl --paragraphs --merges 10 --out v --min-count 3",
        {"input": ["a.xml", "b.jsonl"], "paragraphs": True, "merges": 10, "out": "v",
         "min_count": 3},
    ),
    "binarize": (
        "--input a.txt --paragraphs --tokenizer biogpt-large --out s --valid-fraction 0.1 "
        "--exclude e.txt --workers 2 --shard-tokens 1000 --quiet",
        {"input": ["a.txt"], "paragraphs": True, "tokenizer": "biogpt-large", "out": "s",
         "valid_fraction": 0.1, "exclude": ["e.txt"], "workers": 2, "shard_tokens": 1000,
         "quiet": True},
    ),
    "pretrain": (
        "--config c.toml --data d --out o --preset tiny --init-from i --max-steps 3 --lr 0.001 "
        "--warmup-updates 2 --schedule cosine --clip-norm 1.0 --weight-decay 0.1 "
        "--tokens-per-sample 16 --tokens-per-update 64 --blocks-per-batch 2 --dtype bf16 "
        "--compile --activation-checkpointing --distributed fsdp --valid-every 5 --save-every 6 "
        "--seed 7 --device cpu --resume --overwrite",
        {"config": "c.toml", "data": "d", "out": "o", "preset": "tiny", "init_from": "i",
         "max_steps": 3, "lr": 0.001, "warmup_updates": 2, "schedule": "cosine",
         "clip_norm": 1.0, "weight_decay": 0.1, "tokens_per_sample": 16,
         "tokens_per_update": 64, "blocks_per_batch": 2, "dtype": "bf16", "compile": True,
         "activation_checkpointing": True, "distributed": "fsdp", "valid_every": 5,
         "save_every": 6, "seed": 7, "device": "cpu", "resume": True, "overwrite": True},
    ),
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(FIRST_RELEASE))
def test_first_release_flags_parse_as_they_did(command: str) -> None:
    flags, parsed = FIRST_RELEASE[command]
    args = vars(build_parser().parse_args([command, *shlex.split(flags)]))
    assert {name: args[name] for name in parsed} == parsed
