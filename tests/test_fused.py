"""The compiled decoding step of 1 to 8 rows (biogpt.cpu.fused) against the op-by-op step."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from biogpt import BioGPT, cpu
from biogpt.cache import KVCache
from biogpt.config import ModelConfig
from biogpt.cpu import gemv
from biogpt.cpu.fused import FusedStep
from biogpt.cpu.fused import gelu as fused_gelu
from biogpt.cpu.layers import Int8Linear
from biogpt.decoding import generate
from biogpt.decoding.steps import decode_step, prefill

pytestmark = pytest.mark.skipif(not gemv.available(), reason="kernel not built or no AVX-512")


@pytest.fixture
def lively(lively_model: Callable[..., BioGPT]) -> Callable[..., BioGPT]:
    """`lively(seed, **overrides)`: a tiny random model whose logits depend on the context,
    with layer norms and biases that are not the identity and zero either, so that every
    weight the step reads matters."""

    def make(seed: int, **overrides) -> BioGPT:
        model = lively_model(seed, **overrides)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1:
                    p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0, 0.1)
        return model

    return make


def run_both(model: BioGPT, ids: torch.Tensor, real: torch.Tensor, steps: int):
    """Prefill two caches with the prompt, then feed the same greedy tokens to the op-by-op
    and the fused step: both steps' logits and caches, step by step."""
    step = FusedStep.build(model)
    assert step is not None
    caches = [model.new_cache(1, ids.shape[1] + steps) for _ in range(2)]
    with torch.inference_mode():
        logits = [prefill(model, ids, real, cache) for cache in caches]
        token = int(logits[0].argmax())
        for _ in range(steps):
            ours = step(token, caches[1])
            reference = decode_step(model, torch.tensor([token]), caches[0])
            yield reference, ours, caches
            token = int(reference.argmax())


# Shapes off every vector width and group: head dims 24 and 11 (not a multiple of 16), odd
# widths and MLP sizes (odd k for fc2 and the bf16 pairs), vocabularies not a multiple of 4
# rows (BioGPT-Large's is 57,717).
ODD_SHAPES = [
    dict(hidden_size=72, num_heads=3, intermediate_size=100, vocab_size=509),
    dict(hidden_size=66, num_heads=6, intermediate_size=131, vocab_size=510),
]


def prepared(model: BioGPT, layers: str, rows: int = 1) -> BioGPT:
    """`model` with plain nn.Linear layers, GemvLinear ones (packed for `rows`), int8 ones,
    or int8 ones with q, k and v left as three layers ("int8 apart")."""
    if layers == "packed":
        cpu.prepare(model, rows)
    elif layers.startswith("int8"):
        model.quantize_int8()
    if layers == "int8 apart":  # the model's own attention, over three int8 layers
        for layer in model.biogpt.layers:
            inference = layer.self_attn
            plain = inference.plain
            for name, linear in inference.qkv_proj.split().items():
                setattr(plain, name, Int8Linear.from_linear(linear))
            plain.out_proj = inference.out_proj
            layer.self_attn = plain
    return model


@pytest.mark.parametrize(
    "layers, shape",
    [
        ("plain", {}),
        ("packed", {}),
        ("packed", ODD_SHAPES[0]),
        ("plain", ODD_SHAPES[1]),
        ("int8", {}),
        ("int8", ODD_SHAPES[0]),
        ("int8 apart", {}),
    ],
)
def test_step_matches_the_op_by_op_step(lively, layers: str, shape: dict) -> None:
    model = prepared(lively(0, **shape), layers)
    ids = torch.tensor([[2, 17, 300, 45, 9]])
    real = torch.ones_like(ids, dtype=torch.bool)
    count = 0
    for reference, ours, (a, b) in run_both(model, ids, real, steps=20):
        assert ours.shape == reference.shape == (1, model.config.vocab_size)
        assert ours.dtype == torch.float32
        assert torch.allclose(ours, reference, atol=2e-5, rtol=1e-5)
        assert int(ours.argmax()) == int(reference.argmax())
        n = a.length
        assert b.length == n and torch.equal(a.seen, b.seen) and torch.equal(a.mask, b.mask)
        for x, y in ((a.keys, b.keys), (a.values, b.values)):  # within fp32 sums' rounding
            x, y = x[:, :, :, :n], y[:, :, :, :n]
            assert (x - y).abs().max() <= 1e-5 * x.abs().max()
        count += 1
    assert count == 20


def test_step_skips_padding_in_the_cache_and_numbers_positions_like_fairseq(lively) -> None:
    # A left-padded prompt of one row: the cache holds padding slots, which the step must
    # not attend to, and the positions continue from the real tokens only.
    model = lively(1)
    ids = torch.tensor([[1, 1, 1, 2, 50, 60]])
    real = ids != 1
    last = None
    for reference, ours, (_, cache) in run_both(model, ids, real, steps=8):
        assert cache.padded
        assert torch.allclose(ours, reference, atol=2e-5, rtol=1e-5)
        last = ours
    # Had the padding been attended to (or counted in the positions), the logits would
    # differ: the unpadded prompt gives the same ones.
    plain = torch.tensor([[2, 50, 60]])
    for reference, _, _ in run_both(model, plain, torch.ones_like(plain, dtype=torch.bool), 8):
        unpadded = reference
    assert torch.allclose(last, unpadded, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "int8"])
@pytest.mark.parametrize("rows, shape", [(5, {}), (2, ODD_SHAPES[0]), (6, {}), (8, ODD_SHAPES[1])])
def test_several_rows_give_each_row_what_it_gets_alone(
    lively, rows: int, shape: dict, dtype: torch.dtype | str
) -> None:
    # Rows decoded together (up to 5 with four weight rows per pass, 6-8 with two; odd
    # shapes for partial groups and vector tails; one row left-padded): every row's logits
    # and cache are bit for bit those of the row decoded alone, whatever the others hold.
    if dtype == torch.bfloat16 and not gemv.bf16_dot():
        pytest.skip("no AVX512-BF16")
    if dtype == "int8":
        model = prepared(lively(2, **shape), "int8")
    else:
        model = prepared(lively(2, **shape).to(dtype), "packed", rows)
    step = FusedStep.build(model)
    g = torch.Generator().manual_seed(rows)
    ids = torch.randint(4, model.config.vocab_size, (rows, 5), generator=g)
    ids[:, 0] = 2
    ids[0, :2] = torch.tensor([1, 2])  # the first row: one padding slot, then its prompt
    real = ids != 1
    with torch.inference_mode():
        together = model.new_cache(rows, 12)
        alone = [model.new_cache(1, 12) for _ in range(rows)]
        tokens = torch.cat(
            [prefill(model, ids[r : r + 1], real[r : r + 1], alone[r]) for r in range(rows)]
        ).argmax(-1)
        for name in ("keys", "values", "mask", "seen"):  # the same start for both
            parts = [getattr(c, name) for c in alone]
            setattr(together, name, torch.cat(parts, dim=int(name in ("keys", "values"))))
        together.length, together.padded = alone[0].length, True
        for _ in range(6):
            logits = step(tokens, together)
            assert logits.shape == (rows, model.config.vocab_size)
            for r, cache in enumerate(alone):
                cache.padded = True  # the same path through the mask as the batch's rows
                assert torch.equal(logits[r : r + 1], step(int(tokens[r]), cache)), r
                n = cache.length
                assert torch.equal(together.keys[:, r, :, :n], cache.keys[:, 0, :, :n])
                assert torch.equal(together.values[:, r, :, :n], cache.values[:, 0, :, :n])
            tokens = logits.argmax(-1)


def test_several_padded_rows_match_the_op_by_op_step(lively) -> None:
    # Left-padded prompts of three lengths: each row attends to its own real slots and
    # numbers its positions from its own real tokens, as the op-by-op batched step does.
    model = lively(3)
    ids = torch.tensor([[1, 1, 2, 50, 60], [2, 7, 8, 9, 10], [1, 1, 1, 2, 300]])
    real = ids != 1
    step = FusedStep.build(model)
    with torch.inference_mode():
        caches = [model.new_cache(3, 14) for _ in range(2)]
        tokens = prefill(model, ids, real, caches[0]).argmax(-1)
        prefill(model, ids, real, caches[1])
        assert caches[1].padded
        for _ in range(8):
            reference = decode_step(model, tokens, caches[0])
            ours = step(tokens, caches[1])
            assert torch.allclose(ours, reference, atol=2e-5, rtol=1e-5)
            assert torch.equal(ours.argmax(-1), reference.argmax(-1))
            assert torch.equal(caches[0].seen, caches[1].seen)
            tokens = reference.argmax(-1)


def test_results_do_not_depend_on_the_thread_count(lively) -> None:
    model = lively(2, hidden_size=128, intermediate_size=256, num_heads=8)
    cpu.prepare(model, 1)
    ids = torch.tensor([[2, 5, 6, 7]])
    out = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            step = FusedStep.build(model)
            cache = model.new_cache(1, 16)
            with torch.inference_mode():
                prefill(model, ids, torch.ones_like(ids, dtype=torch.bool), cache)
                out.append(torch.cat([step(t, cache) for t in (40, 41, 42)]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def count_fused_rows(monkeypatch) -> list[int]:
    """The rows of every fused step from now on, in a list that fills as they run."""
    calls: list[int] = []
    real_call = FusedStep.__call__

    def counting(self, tokens, cache):
        calls.append(torch.as_tensor(tokens).numel())
        return real_call(self, tokens, cache)

    monkeypatch.setattr(FusedStep, "__call__", counting)
    return calls


def test_generate_takes_the_step_for_up_to_8_rows_and_decodes_the_same_tokens(
    lively,
    monkeypatch,
) -> None:
    model = lively(3)
    ids = torch.tensor([[2, 100, 200, 300]])
    batch = torch.tensor([[2, 100, 200, 300], [1, 2, 7, 70], [2, 5, 6, 7]])

    def runs():  # one row, a padded batch, beam search, a batch whose rows end one by one
        return [
            generate(model, ids, max_new_tokens=30, min_new_tokens=30).sequences,
            generate(model, batch, batch != 1, max_new_tokens=12, min_new_tokens=12).sequences,
            generate(model, ids, max_new_tokens=12, num_beams=4).sequences,
            generate(model, batch, batch != 1, max_new_tokens=12, eos_token_id=ender).sequences,
        ]

    # A token the batch's rows produce at different steps, taken as the end of text.
    plain = generate(model, batch, batch != 1, max_new_tokens=12, min_new_tokens=12)
    ender = int(plain.sequences[1, 7])

    calls = count_fused_rows(monkeypatch)
    ours = runs()
    assert calls[:29] == [1] * 29  # every step after the prefill but the last token's
    assert calls[29:40] == [3] * 11  # the batch's three rows in every call
    beams = len(calls) - 40 - len([c for c in calls[40:] if c != 4])
    assert beams > 0 and calls[40 : 40 + beams] == [4] * beams  # four beams in every call
    ending = calls[40 + beams :]  # the batch whose rows end: 3 rows, then fewer
    assert ending[0] == 3 and min(ending) < 3 and ending == sorted(ending, reverse=True)
    if gemv.bf16_dot():  # a bf16 model too (its tokens may differ from op by op, so only this)
        calls.clear()
        generate(lively(3).to(torch.bfloat16), ids, max_new_tokens=5, min_new_tokens=5)
        assert calls == [1] * 4
    calls.clear()
    generate(model, ids.repeat(9, 1), max_new_tokens=5, min_new_tokens=5)
    assert not calls  # nine rows: the batched op-by-op step
    monkeypatch.setattr(FusedStep, "build", classmethod(lambda cls, model, rows=1: None))
    for fused, op_by_op in zip(ours, runs(), strict=True):
        assert torch.equal(fused, op_by_op)
    ends = [(row[4:] == ender).nonzero()[:1].tolist() for row in ours[3]]
    assert len({tuple(map(tuple, e)) for e in ends}) > 1  # rows ended at different steps
    assert len(set(ours[0][0, 4:].tolist())) > 5  # not one token repeated


def test_generate_decodes_an_int8_model_with_the_step_as_op_by_op(lively, monkeypatch) -> None:
    model = prepared(lively(3), "int8")
    batch = torch.tensor([[2, 100, 200, 300], [1, 2, 7, 70], [2, 5, 6, 7]])

    def runs():  # greedy over a padded batch, beam search
        return [
            generate(model, batch, batch != 1, max_new_tokens=20, min_new_tokens=20).sequences,
            generate(model, batch[:1], max_new_tokens=12, num_beams=4).sequences,
        ]

    calls = count_fused_rows(monkeypatch)
    ours = runs()
    assert calls[:19] == [3] * 19 and set(calls[19:]) == {4}
    monkeypatch.setattr(FusedStep, "build", classmethod(lambda cls, model, rows=1: None))
    for fused, op_by_op in zip(ours, runs(), strict=True):
        assert torch.equal(fused, op_by_op)
    assert len(set(ours[0][0, 4:].tolist())) > 5  # not one token repeated


def test_build_declines_what_it_cannot_run(lively) -> None:
    model = lively(4)
    assert FusedStep.build(model.train()) is None  # dropout would be skipped
    model.eval()
    assert FusedStep.build(BioGPT(model.config).to(torch.float16).eval()) is None
    cpu.prepare(model, 16)  # oneDNN's blocked layout: no row-major weight to read
    assert FusedStep.build(model) is None
    cpu.release(model)
    model.quantize_int8()
    assert FusedStep.build(model) is not None  # int8 weights, fp32 elsewhere
    model.biogpt.layers[1].fc2 = model.biogpt.layers[1].fc2.to_linear()
    assert FusedStep.build(model) is None  # int8 but for one layer: op by op
    cpu.release(model)
    model.biogpt.layers[0].fc1 = Int8Linear.from_linear(model.biogpt.layers[0].fc1)
    assert FusedStep.build(model) is None  # one int8 layer in an fp32 model
    half = lively(4).to(torch.bfloat16)
    cpu.prepare(half, 16)  # fbgemm's fp16 layers
    assert FusedStep.build(half) is None


needs_bf16_dot = pytest.mark.skipif(not gemv.bf16_dot(), reason="no AVX512-BF16")


@needs_bf16_dot
@pytest.mark.parametrize("rows", [None, 1])
def test_bf16_step_tracks_fp32_on_the_same_weights_closer_than_op_by_op(
    lively, rows: int | None
) -> None:
    # The oracle: the same bf16-rounded weights in fp32, decoded op by op. The fused bf16
    # step rounds only the products' inputs and the cache; the op-by-op bf16 step rounds
    # after every operation, so it should land no further from the oracle, and nearer
    # overall. Eight seeds of the tiny shape and one odd shape.
    totals = {"fused": 0.0, "op": 0.0}
    for seed, shape in [*((seed, {}) for seed in range(8)), (0, ODD_SHAPES[1])]:
        model = lively(seed, **shape).to(torch.bfloat16)
        oracle = lively(seed, **shape).to(torch.bfloat16).float()
        if rows is not None:
            cpu.prepare(model, rows)
        step = FusedStep.build(model)
        assert step is not None and step.dtype == torch.bfloat16
        ids = torch.tensor([[2, 17, 300, 45, 9]])
        real = torch.ones_like(ids, dtype=torch.bool)
        caches = oracle.new_cache(1, 40), model.new_cache(1, 40), model.new_cache(1, 40)
        assert caches[1].keys.dtype == torch.bfloat16
        error = {"fused": 0.0, "op": 0.0}
        agree = 0
        with torch.inference_mode():
            token = int(prefill(oracle, ids, real, caches[0]).argmax())
            prefill(model, ids, real, caches[1]), prefill(model, ids, real, caches[2])
            for _ in range(30):
                want = decode_step(oracle, torch.tensor([token]), caches[0])
                ours = step(token, caches[1])
                op = decode_step(model, torch.tensor([token]), caches[2])
                assert ours.dtype == torch.float32
                error["fused"] += float((ours - want).abs().mean())
                error["op"] += float((op - want).abs().mean())
                agree += int(ours.argmax()) == int(want.argmax())
                token = int(want.argmax())
        assert error["fused"] <= 1.05 * error["op"], seed
        assert error["fused"] / 30 < 0.01 * float(want.abs().max())
        assert agree >= 26
        for kind in totals:
            totals[kind] += error[kind]
    assert totals["fused"] < 0.95 * totals["op"]


def test_step_refuses_a_cache_it_cannot_use_and_indices_out_of_range(lively) -> None:
    model = lively(5)
    step = FusedStep.build(model)
    with torch.inference_mode():
        with pytest.raises(ValueError, match="1 to 8 rows"):
            step(5, KVCache(model.config, 1, 8, torch.bfloat16))  # another dtype
        other = ModelConfig.from_name("tiny", hidden_size=16, num_heads=1)  # same layer count
        with pytest.raises(ValueError, match="does not belong"):
            step(5, KVCache(other, 1, 8))  # the step would write past its buffers
        with pytest.raises(ValueError, match="1 tokens for a cache of 2 rows"):
            step(5, model.new_cache(2, 8))
        with pytest.raises(ValueError, match="1 to 8 rows"):
            step(torch.arange(9) + 4, model.new_cache(9, 8))
        with pytest.raises(IndexError, match="out of range"):
            step(torch.tensor([5, -1]), model.new_cache(2, 8))  # the second row's token
        cache = model.new_cache(1, 2)
        with pytest.raises(IndexError, match="out of range"):
            step(model.config.vocab_size, cache)  # no such token
        step(5, cache), step(6, cache)
        with pytest.raises(IndexError, match="out of range"):
            step(7, cache)  # the cache is full
        assert cache.length == 2


def test_gelu_matches_the_exact_one() -> None:
    x = torch.cat([torch.linspace(-12, 12, 48001), torch.randn(4096) * 3, torch.zeros(3)])
    x = x.float().contiguous()
    y = fused_gelu(x)
    exact = F.gelu(x.double())
    assert (y.double() - exact).abs().max() < 1e-6
    sizable = exact.abs() > 1e-3
    relative = ((y.double() - exact).abs() / exact.abs())[sizable]
    assert relative.max() < 1e-3  # fp32 torch's own error out in the left tail is 9e-4
    assert y[-3:].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_several_tokens_a_row_in_one_call_are_the_one_token_steps(lively, dtype) -> None:
    # `extend` feeds each row T tokens as rows of one step, each at its own slot: every
    # token's logits, and the keys and values it leaves, are those of feeding the tokens one
    # call at a time, bit for bit; in a padded cache (rows of different lengths) too.
    model = lively(7)
    if dtype == torch.int8:
        model.quantize_int8()
    elif dtype == torch.bfloat16:
        model = model.to(dtype)
    step = FusedStep.build(model, rows=2)
    if step is None:
        pytest.skip("the fused step does not run this model here")
    with torch.inference_mode():
        caches = []
        for _ in range(2):
            cache = model.new_cache(1, 40)
            prefill(
                model,
                torch.tensor([[2, 40, 41, 42, 43]]),
                torch.ones(1, 5, dtype=torch.bool),
                cache,
            )
            other = model.new_cache(1, 3)
            prefill(model, torch.tensor([[2, 7]]), torch.ones(1, 2, dtype=torch.bool), other)
            cache.join(other, 40)  # the second row is left-padded: the mask is read
            assert cache.padded
            caches.append(cache)
        drafts = [torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]), torch.tensor([[13], [14]])]
        drafts.append(torch.tensor([[15, 16, 17], [18, 19, 20]]))
        if dtype == torch.float32:  # up to 64 rows x tokens: 24 rows here, past the 8 of a step
            drafts.append(torch.arange(21, 45).view(2, 12))
        for tokens in drafts:
            together = step.extend(tokens, caches[0])
            one_by_one = torch.stack(
                [step(tokens[:, j], caches[1]) for j in range(tokens.shape[1])], 1
            )
            assert torch.equal(together, one_by_one)
        a, b = caches
        fed = sum(d.shape[1] for d in drafts)
        assert a.length == b.length == 5 + fed and torch.equal(a.seen, b.seen)
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        assert torch.equal(a.mask, b.mask)
        most = 64 if dtype == torch.float32 else 8
        assert step.max_rows == most
        with pytest.raises(ValueError, match=f"1 to {most} rows x tokens"):
            step.extend(torch.ones(2, most // 2 + 1, dtype=torch.long), a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_among_unreal_slots_gets_the_logits_it_gets_alone(lively, dtype) -> None:
    # Unreal slots in a row's cache, the left padding of a join and the draft tokens one
    # row gives back while another keeps its own, change nothing in its logits: attention
    # sums the real slots only, in their order, so the row computes as it does alone.
    model = lively(11)
    if dtype == torch.bfloat16:
        model = model.to(dtype)
    step = FusedStep.build(model, rows=2)
    if step is None:
        pytest.skip("the fused step does not run this model here")
    long, short = [2, *range(40, 62)], [2, 7, 9, 11, 13, 15]  # 17 slots of padding: not 16

    def filled(prompt: list[int], capacity: int):
        cache = model.new_cache(1, capacity)
        prefill(model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.bool), cache)
        return cache

    with torch.inference_mode():
        alone = filled(short, 16)
        expected = [step(token, alone)[0] for token in (5, 6, 8, 9)]  # short's next four

        cache = filled(long, 40)
        cache.join(filled(short, 6), 40)
        first = step.extend(torch.tensor([[30, 31, 32], [5, 70, 71]]), cache)
        cache.rollback(torch.tensor([0, 2]))  # the short row keeps one token: two unreal slots
        assert torch.equal(first[1, 0], expected[0])
        second = step(torch.tensor([33, 6]), cache)
        assert torch.equal(second[1], expected[1])
        third = step.extend(torch.tensor([[34, 35], [8, 9]]), cache)
        assert torch.equal(third[1, 0], expected[2]) and torch.equal(third[1, 1], expected[3])
        assert cache.seen.tolist() == [len(long) + 6, len(short) + 4]
