"""The fixed-shape decoding step (biogpt.decoding.static_step) against the ordinary one."""

from __future__ import annotations

import shutil

import pytest
import torch

from biogpt.decoding import generate, static_step
from biogpt.decoding.static_step import StaticStep
from biogpt.decoding.steps import decode_step, prefill
from biogpt.errors import BioGPTError


def padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[1, 1, 1, 2, 17, 300], [2, 5, 6, 7, 8, 9], [1, 2, 40, 41, 42, 43]])
    return ids, ids != 1


@pytest.fixture
def eager(monkeypatch):
    """generate(compile_step=True) with the fixed-shape step run as it is (compiling takes
    tens of seconds on this CPU; the slow test below compiles)."""
    monkeypatch.setattr(static_step, "compiled_step", lambda mode: static_step.static_step)


def test_static_step_matches_the_ordinary_step_on_a_padded_batch(lively_model) -> None:
    model = lively_model(0)
    ids, real = padded_prompts()
    caches = model.new_cache(3, 20), model.new_cache(3, 20)
    with torch.inference_mode():
        tokens = prefill(model, ids, real, caches[0]).argmax(-1)
        prefill(model, ids, real, caches[1])
        step = StaticStep(model, caches[1], compile=False)
        for _ in range(8):
            want = decode_step(model, tokens, caches[0])
            got = step(tokens)
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
            tokens = want.argmax(-1)
    a, b = caches
    n = a.length
    assert step.length == n and int(step.slot) == n
    assert torch.equal(a.seen, b.seen) and torch.equal(a.mask, b.mask)
    assert torch.allclose(a.keys[:, :, :, :n], b.keys[:, :, :, :n], atol=1e-5)
    assert not b.keys[:, :, :, n:].any()  # nothing written past the slots fed


def test_static_step_refuses_to_write_past_the_cache(lively_model) -> None:
    model = lively_model(1)
    cache = model.new_cache(1, 3)
    with torch.inference_mode():
        prefill(model, torch.tensor([[2, 5]]), torch.ones(1, 2, dtype=torch.bool), cache)
        step = StaticStep(model, cache, compile=False)
        step(torch.tensor([6]))
        with pytest.raises(ValueError, match="holds 3 positions"):
            step(torch.tensor([7]))


@pytest.mark.usefixtures("eager")
def test_generate_with_the_static_step_gives_the_same_tokens(lively_model) -> None:
    # Rows that finish early stay in the batch with the static step instead of leaving it:
    # what the others decode must not change.
    model = lively_model(2, eos_boost=30.0)
    ids, real = padded_prompts()
    options = dict(max_new_tokens=12)
    want = generate(model, ids, real, **options)
    got = generate(model, ids, real, compile_step=True, **options)
    assert torch.equal(got.sequences, want.sequences)
    assert torch.allclose(got.scores, want.scores, atol=1e-5)
    lengths = (want.sequences[:, ids.shape[1] :] != 1).sum(dim=1)
    assert lengths.min() < lengths.max()  # rows did end at different steps
    sampled = [
        generate(model, ids, real, do_sample=True, seed=7, compile_step=c, **options).sequences
        for c in (False, True)
    ]
    assert torch.equal(*sampled)
    one = generate(model, ids[1:2], max_new_tokens=12, compile_step=True).sequences
    assert torch.equal(one, want.sequences[1:2, : one.shape[1]])


def test_compile_step_is_refused_with_beam_search(lively_model) -> None:
    with pytest.raises(BioGPTError, match="not beam search"):
        generate(lively_model(3), torch.tensor([[2, 5]]), num_beams=2, compile_step=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit internals, in compile
@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_step_gives_the_same_tokens_without_recompiling(lively_model) -> None:
    # torch.compile for real (about 20 s cold on 2 cores): one graph serves every step.
    from torch._dynamo.utils import counters

    model = lively_model(4)
    ids, real = padded_prompts()
    want = generate(model, ids, real, max_new_tokens=10).sequences
    torch._dynamo.reset()
    counters.clear()
    got = generate(model, ids, real, max_new_tokens=10, compile_step=True).sequences
    assert torch.equal(got, want)
    assert counters["stats"]["unique_graphs"] == 1  # one graph for every step


@pytest.mark.usefixtures("eager")
def test_the_command_line_takes_compile_step(capsys) -> None:
    from biogpt.cli import main

    prompt = ["--max-new-tokens", "8", "COVID-19 is"]
    assert main(["generate", "--model", "mini", *prompt]) == 0
    plain = capsys.readouterr().out
    assert main(["generate", "--model", "mini", "--compile-step", *prompt]) == 0
    assert capsys.readouterr().out == plain
    beams = ["generate", "--model", "mini", "--compile-step", "--num-beams", "2", *prompt]
    assert main(beams) != 0
    assert "not beam search" in capsys.readouterr().err
