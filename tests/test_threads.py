"""The decoding step's thread count, chosen from measured step times (biogpt.cpu.threads).

Simulated machines give each thread count a step time; the chooser must spend its steps on
the fastest count (within the 85% the package promises, probes included), follow a change
of load, and leave the tokens as they are.
"""

from __future__ import annotations

import pytest
import torch

from biogpt.cpu import gemv
from biogpt.cpu.threads import (
    ENVIRONMENT,
    MAX_INTERVAL,
    FixedThreads,
    ThreadChooser,
    candidates,
    chooser_for,
)


def run(chooser: ThreadChooser, step_time: dict[int, float], steps: int) -> float:
    """Drive `chooser` for `steps` steps on a machine where a step on n threads takes
    step_time[n]; returns the time spent."""
    spent = 0.0
    for _ in range(steps):
        threads = chooser.pick()
        spent += step_time[threads]
        chooser.record(threads, step_time[threads])
    return spent


QUIET = {2: 1.0, 1: 1.8}  # two cores free: two threads stream the weights faster
BUSY = {2: 4.5, 1: 1.0}  # a neighbour on one core: the barriers wait for the shared one


def test_candidates() -> None:
    assert candidates(1) == [1]
    assert candidates(2) == [2, 1]
    assert candidates(8) == [8, 7, 4, 1]


@pytest.mark.parametrize("machine", [QUIET, BUSY], ids=["quiet", "busy"])
def test_keeps_most_of_the_best_counts_speed(machine: dict[int, float]) -> None:
    chooser = ThreadChooser(2)
    best = min(machine.values())
    for steps in (64, 1000):
        chooser = ThreadChooser(2)
        assert steps * best / run(chooser, machine, steps) >= 0.85
    assert chooser.current == min(machine, key=machine.__getitem__)


def test_follows_a_change_of_load() -> None:
    chooser = ThreadChooser(2)
    run(chooser, QUIET, 300)
    assert chooser.current == 2
    # A neighbour starts: two slow steps in a row start a probe, which finds one thread.
    run(chooser, BUSY, 4)
    assert chooser.current == 1
    run(chooser, BUSY, 300)
    assert chooser.current == 1
    # It leaves: the next periodic probe (at most MAX_INTERVAL steps away) finds two again.
    run(chooser, QUIET, MAX_INTERVAL + 2)
    assert chooser.current == 2


def test_noise_alone_does_not_switch() -> None:
    """One slow step now and then (a noisy machine) costs no probe of a worse count."""
    chooser = ThreadChooser(2)
    run(chooser, QUIET, 50)
    probes_before = chooser.used.get(1, 0)
    for _ in range(20):
        chooser.record(2, 3.0)  # one spike
        run(chooser, QUIET, 1)
    assert chooser.current == 2
    assert chooser.used.get(1, 0) == probes_before


def test_environment_fixes_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    owner = torch.nn.Linear(1, 1)
    monkeypatch.setenv(ENVIRONMENT, "fixed")
    fixed = chooser_for(owner, 2)
    assert isinstance(fixed, FixedThreads) and fixed.pick() == 2
    monkeypatch.delenv(ENVIRONMENT)
    assert isinstance(chooser_for(owner, 2), ThreadChooser)
    assert chooser_for(owner, 2) is chooser_for(owner, 2)  # kept between calls


@pytest.mark.skipif(not gemv.available(), reason="kernel not built or no AVX-512")
def test_tokens_do_not_depend_on_the_choice(lively_model, monkeypatch) -> None:
    """Adaptive steps (which switch counts as they probe) give the tokens of fixed ones."""
    model = lively_model(3)
    prompt = torch.tensor([[2, 17, 33, 41]])
    monkeypatch.setenv(ENVIRONMENT, "fixed")
    fixed = model.generate(prompt, max_new_tokens=40, min_new_tokens=40)
    monkeypatch.delenv(ENVIRONMENT)
    adaptive = model.generate(prompt, max_new_tokens=40, min_new_tokens=40)
    chooser = chooser_for(model, torch.get_num_threads())
    assert isinstance(chooser, ThreadChooser) and chooser.steps >= 39
    if torch.get_num_threads() > 1:
        assert len(chooser.used) > 1  # it did probe another count
    assert torch.equal(fixed, adaptive)


def test_a_prompt_takes_the_settled_count_never_a_probe(lively_model, monkeypatch) -> None:
    # A probe times a step; a prompt run on the probe's count would only be slower, and its
    # time is not recorded. Prompts (alone or packed) and drafts take the settled count.
    from biogpt.decoding import steps

    model = lively_model(1)
    counts: list[int] = []
    for name in ("prefill", "prefill_each"):
        real = getattr(steps, name)

        def spy(*args, real=real, **kwargs):
            counts.append(torch.get_num_threads())
            return real(*args, **kwargs)

        monkeypatch.setattr(steps, name, spy)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode(), steps.DecodingBatch(model, expected_rows=2) as batch:
            chooser = ThreadChooser(2, start=2)
            chooser.probing = [1]  # a probe of one thread is due at the next step
            batch.threads = chooser
            assert chooser.pick() == 1 and chooser.settled() == 2
            batch.add(torch.tensor([[2, 40, 41]]), torch.ones(1, 3, dtype=torch.bool), 4)
            padded = torch.tensor([[1, 2, 7], [2, 9, 9]])
            batch.add(padded, padded != 1, 4)  # padded prompts take the forward pass
    finally:
        torch.set_num_threads(previous)
    assert counts == [2, 2]
