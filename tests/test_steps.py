"""The step API (biogpt.decoding.steps.DecodingBatch): rows join a running batch and leave
it, and every row gets the tokens it gets decoded alone by `generate`."""

from __future__ import annotations

import pytest
import torch

from biogpt import cpu
from biogpt.cache import KVCache
from biogpt.cpu.fused import FusedStep
from biogpt.cpu.layers import GemvLinear
from biogpt.decoding import generate
from biogpt.decoding.packed import prefill_each
from biogpt.decoding.steps import DecodingBatch, prefill
from biogpt.errors import BioGPTError

EOS = 2


def alone(model, prompt: list[int], new: int) -> list[int]:
    """The oracle: `generate` on the prompt by itself, greedy, `</s>` forbidden."""
    out = generate(model, torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new)
    return out.sequences[0, len(prompt) :].tolist()


def best(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.clone()
    logits[:, EOS] = float("-inf")  # as min_new_tokens does
    return logits.argmax(dim=-1)


def join(batch: DecodingBatch, prompts: list[list[int]], budget: int) -> torch.Tensor:
    """Left-pad `prompts` and add them to the batch; their first tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[1] * (width - len(p)) + p for p in prompts])
    return best(batch.add(ids, ids != 1, budget=budget))


class Driver:
    """Greedy decoding by hand over a DecodingBatch, recording each row's tokens."""

    def __init__(self, batch: DecodingBatch) -> None:
        self.batch = batch
        self.made: dict[int, list[int]] = {}
        self.pending = torch.zeros(0, dtype=torch.long)  # next token of each live row

    def add(self, prompts: list[list[int]], budget: int) -> None:
        first = join(self.batch, prompts, budget)
        for row, token in zip(
            self.batch.rows[-len(prompts) :].tolist(), first.tolist(), strict=True
        ):
            self.made[row] = [token]
        self.pending = torch.cat([self.pending, first])

    def step(self) -> None:
        chosen = best(self.batch.step(self.pending))
        for row, token in zip(self.batch.rows.tolist(), chosen.tolist(), strict=True):
            self.made[row].append(token)
        self.pending = chosen

    def leave(self, row: int) -> None:
        keep = (self.batch.rows != row).nonzero()[:, 0]
        self.batch.keep(keep)
        self.pending = self.pending[keep]


PROMPTS = [[2, 40, 41, 42, 43], [2, 7], [2, 300, 301, 302, 303, 304, 305, 306, 307], [2, 9, 9]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fused", [True, False], ids=["fused step", "op by op"])
def test_rows_that_join_and_leave_get_the_tokens_they_get_alone(
    lively_model, dtype: torch.dtype, fused: bool, monkeypatch
) -> None:
    model = lively_model(3).to(dtype)
    if not fused:
        monkeypatch.setattr(FusedStep, "build", classmethod(lambda cls, model, rows=1: None))
    with torch.inference_mode():
        batch = DecodingBatch(model, expected_rows=3)
        if fused and FusedStep.build(model) is None:
            pytest.skip("the compiled step is not built here")
        run = Driver(batch)
        run.add(PROMPTS[:1], budget=12)
        for _ in range(3):
            run.step()
        run.add(PROMPTS[1:2], budget=10)  # a shorter prompt than the batch's history
        run.step()
        run.add(PROMPTS[2:3], budget=8)  # a longer one: the running rows move right
        for _ in range(3):
            run.step()
        run.leave(0)  # the first row leaves; its slots go at the next join
        run.add(PROMPTS[3:4], budget=5)
        for _ in range(4):
            run.step()
        assert batch.cache is not None and batch.cache.length < 5 + 12 + 9
        want = {0: 8, 1: 9, 2: 8, 3: 5}  # tokens each row made
        assert {row: len(tokens) for row, tokens in run.made.items()} == want
        for row, tokens in run.made.items():
            assert tokens == alone(model, PROMPTS[row], len(tokens)), row


def test_a_batch_is_prepared_once_for_the_rows_it_expects(lively_model) -> None:
    model = lively_model(1)
    DecodingBatch(model, expected_rows=5)
    assert cpu.is_prepared(model) == cpu.can_prepare(model)
    if isinstance(model.biogpt.layers[0].fc1, GemvLinear):  # where the kernel is built
        assert DecodingBatch(model, expected_rows=3).fused is not None
        assert DecodingBatch(model, expected_rows=9).fused is None  # op by op throughout
    DecodingBatch(model, compile_step=True)
    assert not cpu.is_prepared(model)  # torch.compile needs the plain layers


def test_a_compile_step_batch_takes_its_rows_before_its_first_step(
    lively_model, monkeypatch
) -> None:
    from biogpt.decoding import static_step

    monkeypatch.setattr(static_step, "compiled_step", lambda mode: static_step.static_step)
    model = lively_model(2)
    with torch.inference_mode():
        batch = DecodingBatch(model, expected_rows=2, compile_step=True)
        first = join(batch, PROMPTS[:2], budget=4)
        batch.keep(torch.tensor([1]))  # row 0 leaves: it stays in the step, unread
        logits = batch.step(first[1:])
        assert logits.shape == (1, model.config.vocab_size)
        assert int(best(logits)) == alone(model, PROMPTS[1], 2)[1]
        with pytest.raises(BioGPTError, match="before its first step"):
            join(batch, PROMPTS[2:3], budget=2)


def test_an_empty_batch_refuses_a_step(lively_model) -> None:
    batch = DecodingBatch(lively_model(0))
    with pytest.raises(BioGPTError, match="no rows"):
        batch.step(torch.tensor([5]))


def test_a_compile_step_batch_is_built_for_every_row_of_the_call(lively_model, monkeypatch) -> None:
    """A row that ends on its first token leaves before the first step: the fixed-shape
    step still has all the call's rows, so its shapes do not depend on the data."""
    from biogpt.decoding import static_step

    monkeypatch.setattr(static_step, "compiled_step", lambda mode: static_step.static_step)
    sizes: list[int] = []
    made = static_step.StaticStep.__init__

    def record(self, model, cache, compile=True):
        sizes.append(cache.batch_size)
        made(self, model, cache, compile)

    monkeypatch.setattr(static_step.StaticStep, "__init__", record)
    model = lively_model(2)
    ids = torch.tensor([[2, 40, 41], [2, 7, 8], [2, 9, 9]])
    first_stop = {"done": False}

    def stop(rows: torch.Tensor) -> torch.Tensor:
        ended = torch.zeros(rows.shape[0], dtype=torch.bool)
        if not first_stop["done"]:
            ended[1], first_stop["done"] = True, True
        return ended

    generate(model, ids, max_new_tokens=4, min_new_tokens=4, compile_step=True, stop=stop)
    assert sizes == [3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prompts_that_join_together_get_what_they_get_alone(lively_model, dtype) -> None:
    # `add_each` packs prompts into one pass over the weights; each row's logits, cache and
    # tokens are those of the prompt added alone, bit for bit. In fp32 the kernel takes
    # prompts of up to 64 tokens (the model's positions here), in bf16 up to 8.
    model = lively_model(4, max_positions=96).to(dtype)
    longest = 64 if dtype == torch.float32 else 8
    batch = DecodingBatch(model, expected_rows=4)
    if not batch.packs(1):
        pytest.skip("the gemv kernel is not built here")
    assert batch.packs(longest) and not batch.packs(longest + 1)
    torch.manual_seed(0)
    prompts = [torch.randint(3, 512, (t,)).tolist() for t in (3, longest, 1, longest - 2)]

    def forward_alone(prompt: list[int]) -> tuple[torch.Tensor, KVCache]:
        """The oracle: the model's own forward pass over the prompt into a fresh cache."""
        cache = model.new_cache(1, len(prompt))
        ids = torch.tensor([prompt])
        return prefill(model, ids, torch.ones_like(ids, dtype=torch.bool), cache), cache

    with torch.inference_mode():
        run = Driver(batch)
        run.add(prompts[:1], budget=9)  # a running row, then three join at once
        run.step()
        joining = prompts[1:]
        packed, own = prefill_each(model, [torch.tensor(p) for p in joining], longest + 8)
        logits = batch.add_each([torch.tensor(p) for p in joining], [6, 8, 7])
        assert torch.equal(logits, packed)
        for row, prompt in enumerate(joining):
            first, cache = forward_alone(prompt)
            assert torch.equal(logits[row], first[0])  # the same sums in the same order
            slots = slice(longest - len(prompt), longest)
            assert torch.equal(own.keys[:, row, :, slots], cache.keys[:, 0])
            assert torch.equal(own.values[:, row, :, slots], cache.values[:, 0])
            assert (
                own.mask[row].tolist() == [False] * slots.start + [True] * len(prompt) + [False] * 8
            )
        assert own.seen.tolist() == [len(p) for p in joining]
        chosen = best(logits)
        for row, token in zip(batch.rows[-3:].tolist(), chosen.tolist(), strict=True):
            run.made[row] = [token]
        run.pending = torch.cat([run.pending, chosen])
        for _ in range(5):
            run.step()
        for row, prompt in enumerate(prompts):
            made = run.made[row]
            assert made == alone(model, prompt, len(made)), row
        with pytest.raises(BioGPTError, match="prompts that pack"):
            batch.add_each([torch.ones(longest + 1, dtype=torch.long)], [2])
