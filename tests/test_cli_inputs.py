"""A command line that never lies about its inputs: characters the vocabulary loses are
counted on stderr, logits that hold NaN are an error naming the step and the input, closed
or broken standard streams are reported (or, for a reader that went away, kept quiet), and
conflicting flags, bad flag values and bad files are refused in one line naming them.

Most tests run `biogpt.cli.main` in this process; those about closed standard streams need
real file descriptors and run `python -m biogpt` under bash.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from biogpt import BioGPT, ModelConfig, Tokenizer
from biogpt.cli import main, text
from biogpt.decoding import generate
from biogpt.decoding.completion import complete
from biogpt.decoding.output import NonFiniteLogits
from biogpt.decoding.scoring import token_logprobs

REPO = Path(__file__).resolve().parent.parent


def status_of(argv: list[str]) -> int:
    """`main(argv)`'s exit status, also where argparse exits (its errors raise SystemExit)."""
    try:
        return main(argv)
    except SystemExit as done:
        return int(done.code or 0)


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """Standard input holding `data`, as a real (binary-backed, not a terminal) stream."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


# --- characters lost to the vocabulary ------------------------------------------------------


def test_tokenizer_names_the_characters_its_ids_lose() -> None:
    tokenizer = Tokenizer.from_pretrained("biogpt")
    lost = tokenizer.lost_characters("Hello 😀 world 中文")
    assert lost.unknown == ["😀", "中", "文"] and lost.deleted == []
    lost = tokenizer.lost_characters("a\x00b \x01c")
    assert lost.unknown == [] and lost.deleted == ["\x00", "\x01"]
    # Latin and Cyrillic letters are in the vocabulary; "<unk>" written out is its own id.
    assert tokenizer.lost_characters("café Привет <unk> COVID-19.").count == 0


def test_tokenize_counts_lost_characters_of_each_argument(capsys) -> None:
    assert main(["tokenize", "--show", "ids", "Hello 😀 world", "plain words"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    assert err == "biogpt tokenize: warning: text 1 lost 1 character to <unk> (e.g. '😀')\n"


def test_control_characters_on_stdin_are_counted_as_deleted(monkeypatch, capsys) -> None:
    feed_stdin(monkeypatch, "fine\nNUL\x00 here 😀😀\n".encode())
    assert main(["tokenize", "--show", "ids"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    assert err == (
        "biogpt tokenize: warning: stdin line 2 lost 2 characters to <unk> (e.g. '😀') and "
        "1 character deleted (e.g. '\\x00')\n"
    )


def test_generate_and_score_count_lost_characters(capsys) -> None:
    assert main(["generate", "--model", "mini", "--max-new-tokens", "1", "a", "b 中文"]) == 0
    err = capsys.readouterr().err
    assert "biogpt generate: warning: prompt 2 lost 2 characters to <unk> (e.g. '中', '文')" in err
    assert "prompt 1" not in err
    assert main(["score", "--model", "mini", "--json", "aspirin 😀"]) == 0
    assert "biogpt score: warning: text 1 lost 1 character to <unk>" in capsys.readouterr().err


def test_invalid_utf8_on_stdin_is_an_error_naming_the_line(monkeypatch, capsys) -> None:
    feed_stdin(monkeypatch, b"good\n\nLatin-1 \xb5M\n")
    assert main(["tokenize"]) == 2
    out, err = capsys.readouterr()
    assert out.count("\n") == 1  # the first line was done before the bad one was read
    assert err == (
        "biogpt tokenize: error: stdin line 3: not UTF-8 (byte 0xb5 at byte 9); convert the "
        "input, e.g. iconv -f latin1 -t utf-8\n"
    )


def test_invalid_utf8_in_an_input_file_names_the_line(tmp_path: Path, capsys, error_line) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff"}\n')
    assert main(["generate", "--model", "mini", "--input", str(prompts)]) == 2
    assert error_line() == f"biogpt generate: error: {prompts}:2: not UTF-8 (byte 0xff); " \
        "JSON Lines are UTF-8"  # fmt: skip


# --- logits that hold NaN ---------------------------------------------------------------------


def nan_at_position(lively_model, position_row: int = 8):
    """A lively tiny model whose position embedding `position_row` was set to NaN after it
    was built: with the prompts of `PROMPT_IDS`, prompt 1 reaches it at step 3, prompt 0 at
    step 4 (positions count from the real tokens, offset by 2)."""
    model = lively_model(0)
    with torch.no_grad():
        model.biogpt.embed_positions.weight[position_row] = float("nan")
    return model


PROMPT_IDS = torch.tensor([[1, 2, 5, 6, 7], [2, 5, 6, 7, 8]])  # prompt 0 left-padded


@pytest.mark.parametrize(
    "options",
    [{}, {"do_sample": True, "seed": 1}, {"num_beams": 2}, {"num_return_sequences": 2,
     "do_sample": True, "seed": 1}],
    ids=["greedy", "sampling", "beam", "returns"],
)  # fmt: skip
def test_decoding_refuses_nan_logits_naming_step_and_prompt(lively_model, options) -> None:
    model = nan_at_position(lively_model)
    mask = (PROMPT_IDS != 1).long()
    with pytest.raises(NonFiniteLogits, match=r"hold NaN at step 3 \(prompt 1\)") as caught:
        generate(model, PROMPT_IDS, mask, max_new_tokens=6, min_new_tokens=6, **options)
    assert caught.value.index == 1


def test_complete_counts_the_prompt_across_batches(lively_model) -> None:
    """With one prompt per batch, the bad prompt is still named by its place in the list."""
    tokenizer = Tokenizer.from_pretrained("biogpt")
    # Position 5 (row 7) is NaN: only the prompt of 6 tokens reaches it within 2 new tokens.
    model = nan_at_position(lambda seed: lively_model(seed, vocab_size=len(tokenizer)), 7)
    prompts = ["a", "b", "a b c d e"]
    with pytest.raises(NonFiniteLogits, match=r"step 1 \(prompt 2\)"):
        complete(model, tokenizer, prompts, max_new_tokens=2, batch_size=1)


class NaNRow(torch.nn.Module):
    """A model whose logits row `row` of every forward is NaN (a full forward of a real
    model spreads a bad position to every row through attention, so scoring names token 1
    there; this checks which token a row is reported as)."""

    def __init__(self, model: torch.nn.Module, row: int) -> None:
        super().__init__()
        self.model, self.row = model, row
        self.config, self.device = model.config, torch.device("cpu")

    def forward(self, ids: torch.Tensor):
        out = self.model(ids)
        out.logits[:, self.row] = float("nan")
        return out


def test_scoring_refuses_nan_logits_naming_the_token(lively_model) -> None:
    model = NaNRow(lively_model(0), 6)  # row 6 predicts ids[7]: token 7 (ids[0] is </s>)
    with pytest.raises(NonFiniteLogits, match=r"hold NaN at token 7 \(text 0\)"):
        token_logprobs(model, list(range(2, 12)))  # type: ignore[arg-type]


@pytest.fixture
def overflowing_model(tmp_path: Path) -> Path:
    """A saved model whose weights are finite (loading accepts them) but so large that its
    activations overflow float32: the logits come out NaN, as fp16 overflow makes them."""
    config = ModelConfig.from_name(
        "tiny", vocab_size=len(Tokenizer.from_pretrained("biogpt")), hidden_size=16,
        num_heads=2, intermediate_size=32, max_positions=64,
    )  # fmt: skip
    model = BioGPT(config)
    with torch.no_grad():
        for layer in model.biogpt.layers:
            layer.fc1.weight.mul_(1e30)
            layer.fc2.weight.mul_(1e30)
    model.save_pretrained(tmp_path / "overflow")
    return tmp_path / "overflow"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["score", "x"], "at token 1 (text 1)"),
        (["generate", "--max-new-tokens", "2", "a", "b"], "at step 1 (prompt 1)"),
        (["generate", "--max-new-tokens", "2", "--num-beams", "2", "a"], "at step 1 (prompt 1)"),
        (["generate", "--max-new-tokens", "2", "--stream", "--json", "a"], "at step 1 (prompt 1)"),
    ],
    ids=["score", "generate", "beam", "stream"],
)
def test_cli_refuses_nan_logits(overflowing_model: Path, argv, message, capsys) -> None:
    code = main([argv[0], "--model", str(overflowing_model), *argv[1:]])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err == [
        f"biogpt {argv[0]}: error: the model's logits hold NaN {message}; its weights or "
        "--dtype may be at fault"
    ]


# --- standard streams, closed or broken (real file descriptors) -------------------------------


def run_shell(command: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`command` under bash, `biogpt` standing for this interpreter's `python -m biogpt`."""
    biogpt = f"{sys.executable} -m biogpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        ["bash", "-c", command.replace("biogpt ", biogpt + " ")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip


def test_closed_stdout_is_an_error(tmp_path: Path) -> None:
    done = run_shell("biogpt tokenize x >&-", tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("biogpt tokenize: error: standard output is closed")
    assert len(done.stderr.splitlines()) == 1


def test_closed_stdin_is_an_error_where_input_is_read(tmp_path: Path) -> None:
    done = run_shell("biogpt tokenize <&-", tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "biogpt tokenize: error: standard input is closed: pass the texts as arguments or "
        "pipe them\n"
    )


def test_a_reader_that_goes_away_ends_quietly_with_sigpipe_status(tmp_path: Path) -> None:
    """`| head -1`: nothing on stderr, and 141 as for any program stopped by SIGPIPE."""
    done = run_shell(
        "yes 'COVID-19 is a disease' | head -n 30000 | biogpt tokenize 2>err.txt | head -1; "
        'echo "status ${PIPESTATUS[2]}"',
        tmp_path,
    )
    assert done.stdout.splitlines()[-1] == "status 141", done.stdout + done.stderr
    assert (tmp_path / "err.txt").read_text() == ""


# --- conflicting or odd inputs -------------------------------------------------------------


def test_input_file_and_prompt_arguments_conflict(tmp_path: Path, capsys, error_line) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a"}\n')
    # The model does not exist: the conflict is found before loading.
    code = main(["generate", "--model", str(tmp_path / "none"), "--input", str(prompts), "b"])
    assert code == 2
    assert error_line() == (
        f"biogpt generate: error: prompts given both as arguments and in --input {prompts}; "
        "pass one or the other"
    )


def test_blank_stdin_lines_are_skipped(monkeypatch, capsys) -> None:
    feed_stdin(monkeypatch, b"a b\n\n   \nc\n\n")
    assert main(["tokenize", "--show", "ids"]) == 0
    assert capsys.readouterr().out.splitlines() == ["2 14 787", "2 457"]
    feed_stdin(monkeypatch, b"COVID-19 is\n\nAspirin\n")
    assert main(["generate", "--model", "mini", "--json", "--max-new-tokens", "1"]) == 0
    completions = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [c["prompt"] for c in completions] == ["COVID-19 is", "Aspirin"]


def test_stream_json_gives_pieces_then_the_completion(capsys) -> None:
    argv = ["generate", "--model", "mini", "--max-new-tokens", "12", "COVID-19 is", "Aspirin"]
    assert main([*argv, "--json"]) == 0
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main([*argv, "--json", "--stream"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    finals = [r for r in records if "completion" in r]
    assert [f["prompt"] for f in finals] == ["COVID-19 is", "Aspirin"]
    first_pieces = records[: records.index(finals[0])]
    assert first_pieces and all(set(r) == {"piece"} for r in first_pieces)
    assert "".join(r["piece"] for r in first_pieces) == finals[0]["completion"]
    assert [f["completion"] for f in finals] == [p["completion"] for p in plain]


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
        (["--batch-size", "-2"], "argument --batch-size: must be >= 1, got -2"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
        (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 1, got -1"),
        (["--max-new-tokens", "ten"], "argument --max-new-tokens: invalid int value: 'ten'"),
        (["--min-new-tokens", "9", "--max-new-tokens", "4"], "--min-new-tokens must be in 0..--max-new-tokens (4), got 9"),
        (["--num-beams", "0"], "--num-beams must be >= 1, got 0"),
        (["--sample", "--top-p", "2"], "--top-p must be in (0, 1], got 2.0"),
        (["--sample", "--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
        (["--sample", "--temperature", "-1"], "--temperature must be > 0, got -1.0"),
        (["--sample", "--temperature", "nan"], "--temperature must be > 0, got nan"),
        (["--sample", "--top-k", "-1"], "--top-k must be >= 0, got -1"),
        (["--top-k", "5"], "--top-k only applies when sampling: add --sample or drop --top-k"),
        (["--repetition-penalty", "0"], "--repetition-penalty must be > 0, got 0.0"),
        (["--no-repeat-ngram-size", "-1"], "--no-repeat-ngram-size must be >= 0, got -1"),
        (["--num-return-sequences", "0"], "--num-return-sequences must be >= 1, got 0"),
        (["--num-return-sequences", "3", "--num-beams", "2"], "--num-return-sequences 3 needs --sample or at least as many beams (--num-beams 2)"),
        (["--sample", "--num-beams", "2"], "sampling (--sample) with beams is not supported: use --num-beams 1"),
        (["--length-penalty", "2"], "--length-penalty and --early-stopping only apply to beam search (--num-beams > 1)"),
        (["--num-beams", "2", "--compile-step"], "--compile-step works with greedy decoding and sampling, not beam search"),
        (["--early-stopping", "maybe"], "argument --early-stopping: invalid choice: 'maybe'"),
    ],
)  # fmt: skip
def test_bad_decoding_flags_are_one_line_naming_the_flag(
    tmp_path: Path, flags: list[str], named: str, capsys, error_line
) -> None:
    # The model does not exist: each value is refused before anything is loaded.
    code = status_of(["generate", "--model", str(tmp_path / "none"), *flags, "x"])
    line = error_line()
    assert code == 2
    assert line.startswith(f"biogpt generate: error: {named}"), line
    assert "_" not in line.split("error: ", 1)[1].split(" (see")[0].replace("--", "")


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--device", "nonsense"], "--device nonsense: not a device; use cpu, cuda or cuda:N"),
        (["--device", "meta"], "--device meta: not supported; use cpu, cuda or cuda:N"),
        (["--dtype", "nonsense"], "--dtype nonsense: unknown; use fp32, bf16, fp16 or int8"),
        (["--dtype", "int8", "--device", "cuda"], "--dtype int8 runs on the CPU only, not --device cuda"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["generate", "score"])
def test_bad_device_or_dtype_is_refused_before_loading(
    tmp_path: Path, command: str, flags: list[str], named: str, capsys, error_line
) -> None:
    code = main([command, "--model", str(tmp_path / "none"), *flags, "x"])
    assert (code, error_line()) == (2, f"biogpt {command}: error: {named}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused_before_loading(tmp_path: Path, capsys, error_line) -> None:
    code = main(["generate", "--model", str(tmp_path / "none"), "--device", "cuda", "x"])
    line = error_line()
    assert code == 2
    assert line.startswith("biogpt generate: error: --device cuda: CUDA is not available here")


def test_a_prompt_too_long_is_named_with_the_flags_that_fix_it(capsys, error_line) -> None:
    long_prompt = " ".join(["cells"] * 1100)
    assert main(["generate", "--model", "mini", "--max-new-tokens", "8", "a", long_prompt]) == 2
    assert error_line() == (
        "biogpt generate: error: prompt 2 has 1101 tokens but at most 1016 fit beside "
        "--max-new-tokens 8 in the model's 1024 positions; shorten it, lower "
        "--max-new-tokens, or pass --truncate"
    )


def test_convert_refuses_a_bad_destination_before_loading(
    tmp_path: Path, capsys, error_line
) -> None:
    source = str(tmp_path / "no-such-source")  # never read: every case fails before
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "config.json").write_text("{}")
    cases = {
        str(a_file): f"{a_file}: exists and is not a directory",
        str(a_file / "out"): f"{a_file / 'out'}: cannot be created, {a_file} is not a directory",
        str(tmp_path / "held"): f"{tmp_path / 'held'}: already holds config.json; pass "
        "--overwrite to replace it",
    }
    for destination, message in cases.items():
        assert main(["convert", source, destination]) == 2
        assert error_line() == f"biogpt convert: error: {message}"
    assert main(["convert", source, str(tmp_path / "out"), "--dtype", "fp8"]) == 2
    assert error_line().startswith("biogpt convert: error: --dtype fp8: unknown")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_convert_refuses_an_unwritable_destination(tmp_path: Path, capsys, error_line) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert main(["convert", str(tmp_path / "none"), str(locked / "out")]) == 2
    assert "cannot write in" in error_line()


# --- files that are not what they should be ----------------------------------------------------


@pytest.fixture(scope="module")
def saved_mini(tmp_path_factory) -> Path:
    """`mini` in the Hugging Face layout and as a fairseq-style pickle, to spoil copies of."""
    root = tmp_path_factory.mktemp("mini")
    model = BioGPT.from_pretrained("mini")
    model.save_pretrained(root / "hf")
    torch.save({"model": model.state_dict()}, root / "checkpoint.pt")
    return root


def spoiled_models(saved: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a --model path that is wrong in one way, what its error must say)."""
    cases: dict[str, tuple[Path, str]] = {}

    def hf_copy(name: str) -> Path:
        folder = root / name
        folder.mkdir()
        for file in (saved / "hf").iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        return folder

    empty_dir = root / "empty-dir"
    empty_dir.mkdir()
    cases["empty directory"] = (empty_dir, f"{empty_dir}: no weights file")
    garbage = root / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    cases["garbage without config"] = (garbage, f"{root / 'config.json'}: not found")
    folder = hf_copy("truncated-safetensors")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    cases["truncated safetensors"] = (folder, f"{weights}: corrupt or truncated")
    folder = hf_copy("empty-safetensors")
    (folder / "model.safetensors").write_bytes(b"")
    cases["empty safetensors"] = (folder, f"{folder / 'model.safetensors'}: corrupt or truncated")
    folder = hf_copy("garbage-safetensors")
    (folder / "model.safetensors").write_bytes(os.urandom(3000))
    cases["garbage safetensors"] = (folder, f"{folder / 'model.safetensors'}: corrupt")
    folder = hf_copy("bad-config")
    (folder / "config.json").write_text("{not json")
    cases["config not JSON"] = (folder, f"{folder / 'config.json'}: not valid JSON")
    folder = hf_copy("list-config")
    (folder / "config.json").write_text("[1, 2]")
    cases["config not an object"] = (folder, f"{folder / 'config.json'}: expected a JSON object")
    folder = hf_copy("thin-config")  # keys missing: transformers' defaults, 24 layers
    (folder / "config.json").write_text('{"model_type": "biogpt"}')
    cases["config lacking keys"] = (folder, "config has num_layers=24 but the weights have")
    pickle = root / "checkpoint.pt"
    pickle.write_bytes((saved / "checkpoint.pt").read_bytes()[:20000])
    cases["truncated pickle"] = (pickle, f"{pickle}: corrupt")
    empty_pickle = root / "empty.pt"
    empty_pickle.write_bytes(b"")
    cases["empty pickle"] = (empty_pickle, f"{empty_pickle}: corrupt")
    return cases


def test_spoiled_model_files_are_one_line_naming_the_file(
    saved_mini: Path, tmp_path: Path, capsys, error_line
) -> None:
    for name, (path, message) in spoiled_models(saved_mini, tmp_path).items():
        code = main(["score", "--model", str(path), "x"])
        line = error_line()
        assert code == 2, name
        assert message in line, f"{name}: {line}"


def test_bad_input_files_are_one_line_naming_the_file(tmp_path: Path, capsys, error_line) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\x00\x01binary\x02\n")
    missing = tmp_path / "missing.jsonl"
    cases = {
        folder: f"{folder}: cannot read (Is a directory)",
        empty: f"--input {empty}: holds no prompts",
        garbage: f"{garbage}:1: not valid JSON",
        missing: f"{missing}: cannot read (No such file or directory)",
    }
    for path, message in cases.items():
        assert main(["generate", "--model", "mini", "--input", str(path)]) == 2
        assert error_line().startswith(f"biogpt generate: error: {message}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_input_file_is_one_line(tmp_path: Path, capsys, error_line) -> None:
    locked = tmp_path / "locked.jsonl"
    locked.write_text('{"prompt": "a"}\n')
    locked.chmod(0)
    assert main(["generate", "--model", "mini", "--input", str(locked)]) == 2
    assert error_line() == f"biogpt generate: error: {locked}: cannot read (Permission denied)"


# --- errors of the system, and argparse's own -------------------------------------------------


@pytest.mark.parametrize(
    "error, status",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors"), 1),
        (PermissionError(errno.EACCES, "Permission denied", "/data/in.txt"), 2),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/gone"), 2),
    ],
)
def test_an_escaping_os_error_is_one_line_naming_its_file(
    monkeypatch, error: OSError, status: int, capsys, error_line
) -> None:
    def fails(args) -> None:
        raise error

    monkeypatch.setattr(text, "cmd_tokenize", fails)
    assert main(["tokenize", "x"]) == status
    assert error_line() == f"biogpt tokenize: error: {error.filename}: {error.strerror}"


def test_a_bug_keeps_its_traceback(monkeypatch) -> None:
    def bug(args) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(text, "cmd_tokenize", bug)
    with pytest.raises(ZeroDivisionError):
        main(["tokenize", "x"])


def test_argparse_errors_are_one_line(capsys, error_line) -> None:
    assert status_of(["generate", "--model", "mini", "--no-such-flag", "x"]) == 2
    assert error_line() == (
        "biogpt generate: error: unrecognized arguments: --no-such-flag "
        "(see biogpt generate --help)"
    )
    assert status_of(["generate", "x"]) == 2
    assert error_line() == (
        "biogpt generate: error: the following arguments are required: --model "
        "(see biogpt generate --help)"
    )
