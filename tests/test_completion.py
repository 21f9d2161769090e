"""Text-level generation: prompts in, completions out, streaming, stop strings, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from biogpt import BioGPT
from biogpt.cli import main
from biogpt.config import ModelConfig
from biogpt.decoding.completion import TextStream, complete, stream
from biogpt.errors import BioGPTError
from biogpt.tokenizer import Tokenizer

PROMPTS = ["COVID-19 is", "Aspirin inhibits", "The patients' IL-6 levels (p<0.05)"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_pretrained("biogpt")


@pytest.fixture(scope="module")
def model() -> BioGPT:
    """A random model with the real vocabulary size, lively enough not to repeat itself."""
    config = ModelConfig.from_name(
        "tiny", vocab_size=42384, hidden_size=32, num_heads=2, max_positions=128
    )
    torch.manual_seed(0)
    m = BioGPT(config).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02 if "embed_tokens" in name else 0.5)
    return m


def test_complete_matches_token_level_generate(model: BioGPT, tokenizer: Tokenizer) -> None:
    results = complete(model, tokenizer, PROMPTS, max_new_tokens=12)
    assert [r.prompt for r in results] == PROMPTS
    for prompt, result in zip(PROMPTS, results, strict=True):
        ids = torch.tensor([tokenizer.encode(prompt)])
        alone = model.generate(ids, max_new_tokens=12)[0, ids.shape[1] :].tolist()
        expected = alone[: alone.index(2)] if 2 in alone else alone
        assert result.new_tokens == expected
        assert result.completion == tokenizer.decode(expected)
        assert result.text == tokenizer.decode(tokenizer.encode(prompt) + expected)
        assert result.finish_reason == ("eos" if 2 in alone else "length")


def test_num_return_sequences_are_grouped_by_prompt(model: BioGPT, tokenizer: Tokenizer) -> None:
    results = complete(
        model, tokenizer, PROMPTS[:2], max_new_tokens=6, num_beams=3, num_return_sequences=3
    )
    assert [r.prompt for r in results] == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    scores = [r.score for r in results[:3]]
    assert scores == sorted(scores, reverse=True)


def test_stream_joins_to_the_completion(model: BioGPT, tokenizer: Tokenizer) -> None:
    for prompt in PROMPTS:
        for options in (
            {"max_new_tokens": 40},
            {"max_new_tokens": 30, "do_sample": True, "seed": 1},
        ):
            pieces = list(stream(model, tokenizer, prompt, **options))
            final = complete(model, tokenizer, prompt, **options)[0].completion
            assert "".join(pieces) == final
            assert len(pieces) > 1  # it did stream


def test_text_stream_never_takes_text_back(tokenizer: Tokenizer) -> None:
    """Feeding real text token by token: every chunk is final, and together they are the text."""
    text = (
        'COVID-19 is caused by SARS-CoV-2; "quoted" words, (brackets) and patients\' '
        "IL-6 levels fell by 35% (p<0.05) in 2019, e.g. Dr. Smith's cohort..."
    )
    ids = tokenizer.encode(text)[1:]
    stream_ = TextStream(tokenizer)
    chunks = [stream_.push(i) for i in ids] + [stream_.finish()]
    assert "".join(chunks) == tokenizer.decode(ids)


def test_stop_strings_end_completions(model: BioGPT, tokenizer: Tokenizer) -> None:
    free = complete(model, tokenizer, PROMPTS, max_new_tokens=30)
    checked = 0
    for prompt, result in zip(PROMPTS, free, strict=True):
        words = result.completion.split()
        if len(words) < 4:
            continue
        checked += 1
        stop = words[2]
        stopped = complete(model, tokenizer, prompt, max_new_tokens=30, stop=[stop])[0]
        assert stopped.finish_reason == "stop"
        assert stop not in stopped.completion
        assert result.completion.startswith(stopped.completion)
        assert len(stopped.new_tokens) < len(result.new_tokens)
    assert checked >= 2


def test_long_prompts_are_refused_or_truncated(model: BioGPT, tokenizer: Tokenizer) -> None:
    long_prompt = " ".join(["cells"] * 200)
    with pytest.raises(BioGPTError, match="prompt 0 has"):
        complete(model, tokenizer, long_prompt, max_new_tokens=8)
    result = complete(model, tokenizer, long_prompt, max_new_tokens=8, truncate=True)[0]
    assert result.prompt_tokens == 128 - 8


def test_cli_generate_json_and_stream(
    model: BioGPT, tokenizer: Tokenizer, tmp_path, capsys
) -> None:
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    assert (
        main(
            [
                "generate",
                "--model",
                str(tmp_path / "m"),
                "--json",
                "--input",
                str(prompts),
                "--max-new-tokens",
                "10",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = complete(model, tokenizer, PROMPTS, max_new_tokens=10)
    assert [r["completion"] for r in rows] == [e.completion for e in expected]
    assert all(r["new_tokens"] == len(e.new_tokens) for r, e in zip(rows, expected, strict=True))

    assert (
        main(
            [
                "generate",
                "--model",
                str(tmp_path / "m"),
                "--stream",
                "--max-new-tokens",
                "10",
                PROMPTS[0],
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith(PROMPTS[0]) and expected[0].completion in out


def test_cli_refuses_bad_options_before_loading(tmp_path, capsys) -> None:
    missing = str(tmp_path / "nowhere")
    assert main(["generate", "--model", missing, "--top-k", "5", "x"]) == 2
    assert "only applies when sampling" in capsys.readouterr().err
    assert main(["generate", "--model", missing, "--stream", "--num-beams", "2", "x"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n')
    assert main(["generate", "--model", missing, "--input", str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
