"""Prompt-lookup speculative decoding (biogpt.decoding.speculative): several tokens a pass,
exactly plain greedy decoding's tokens and scores on the same step, for fp32, bf16 and int8
models; `DecodingBatch.extend` and `rollback`, which it is built on."""

from __future__ import annotations

import pytest
import torch

from biogpt import BioGPT, cpu
from biogpt.cpu import gemv
from biogpt.cpu.fused import FusedStep
from biogpt.decoding import GenerationConfig, generate
from biogpt.decoding.speculative import NgramIndex, SpeculativeOutput, prompt_lookup_greedy
from biogpt.decoding.steps import DecodingBatch
from biogpt.errors import BioGPTError

pytestmark = pytest.mark.skipif(not gemv.available(), reason="needs the gemv kernel (AVX-512)")


@pytest.fixture
def no_fused_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode as a CPU where the fused C step does not run (one without AVX512-BF16, for
    a bf16 model): every step is the op-by-op one, which speculation can match exactly."""
    monkeypatch.setattr(FusedStep, "build", classmethod(lambda cls, *args, **kwargs: None))


def make(lively_model, dtype: str, seed: int = 0) -> BioGPT:
    model = lively_model(seed)
    if dtype == "int8":
        cpu.quantize_int8(model)
        return model
    return model.to(getattr(torch, dtype))


def speculate(model: BioGPT, ids: torch.Tensor, real: torch.Tensor, **options) -> SpeculativeOutput:
    """Speculative greedy decoding over the op-by-op step, chosen on purpose."""
    with DecodingBatch(model, fused_step=False) as batch:
        assert batch.extends_exactly
        return prompt_lookup_greedy(batch, ids, real, GenerationConfig(**options))


def repetitive_prompt(vocab: int, seed: int, padding: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt that says a phrase three times: its n-grams recur, so drafts are found."""
    phrase = torch.randint(4, vocab, (5,), generator=torch.Generator().manual_seed(seed))
    ids = torch.cat([torch.ones(padding, dtype=torch.long), torch.tensor([2]), *[phrase] * 3])
    return ids[None], ids[None] != 1


def test_ngram_index_drafts_what_followed_the_latest_longest_match() -> None:
    index = NgramIndex([5, 6, 7, 8, 9, 6, 7, 3, 4])
    index.append(6)
    index.append(7)
    assert index.draft(3) == [3, 4, 6]  # "6 7" last occurred before "3 4"
    index.append(8)
    assert index.draft(5) == [9, 6, 7, 3, 4]  # "6 7 8" is longer than "7 8" or "8"
    assert index.draft(0) == []
    assert NgramIndex([5, 6]).draft(3) == []  # 6 never occurred before
    assert NgramIndex([4, 5, 6, 5, 6]).draft(5) == [5, 6, 5, 6, 5]  # a repetition goes on
    assert NgramIndex([3, 9, 9]).draft(3) == [9, 9, 9]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_extend_gives_each_token_the_logits_of_its_own_step(lively_model, dtype: str) -> None:
    model = make(lively_model, dtype)
    ids, real = repetitive_prompt(model.config.vocab_size, 1, padding=2)
    fed = torch.randint(4, model.config.vocab_size, (1, 6), generator=torch.Generator())
    with (
        DecodingBatch(model, fused_step=False) as one,
        DecodingBatch(model, fused_step=False) as many,
    ):
        one.add(ids, real, budget=12)
        many.add(ids, real, budget=12)
        steps = torch.stack([one.step(fed[:, j]) for j in range(6)], dim=1)
        assert torch.equal(many.extend(fed), steps)
        many.rollback(4)  # the last four go back, and others take their slots
        other = torch.tensor([[7, 8, 9, 10, 11]])
        again = many.extend(other)
    with DecodingBatch(model, fused_step=False) as fresh:
        fresh.add(ids, real, budget=12)
        fresh.extend(fed[:, :2])
        assert torch.equal(again, torch.stack([fresh.step(t) for t in other.T], dim=1))


def test_rollback_frees_slots_and_positions(lively_model) -> None:
    model = lively_model(0)
    cache = model.new_cache(1, 16)
    model.biogpt(torch.tensor([[2, 5, 6, 7]]), None, None, cache)
    cache.rollback(2)
    assert (cache.length, int(cache.seen[0])) == (2, 2)
    assert cache.mask[0].tolist() == [True, True] + [False] * 14
    with pytest.raises(ValueError, match="cannot take back 3 of 2"):
        cache.rollback(3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("padding", [0, 3])
def test_accepted_drafts_give_the_greedy_tokens(
    lively_model, no_fused_step, monkeypatch: pytest.MonkeyPatch, dtype: str, padding: int
) -> None:
    """Drafts from an oracle (plain greedy's own next tokens) are all accepted: up to 8
    tokens a pass, and still exactly greedy's tokens and scores."""
    model = make(lively_model, dtype, seed=1)
    ids, real = repetitive_prompt(model.config.vocab_size, 2, padding)
    plain = generate(model, ids, real.long(), max_new_tokens=40, min_new_tokens=40)
    truth = plain.sequences[0, ids.shape[1] :].tolist()
    prompt_tokens = int(real.sum())

    def oracle(index: NgramIndex, length: int) -> list[int]:
        made = len(index.tokens) - prompt_tokens
        return truth[made : made + length]

    monkeypatch.setattr(NgramIndex, "draft", oracle)
    for k in (1, 4, 7):
        out = speculate(model, ids, real, max_new_tokens=40, min_new_tokens=40, prompt_lookup=k)
        assert torch.equal(out.sequences, plain.sequences)
        assert torch.equal(out.scores, plain.scores)
        assert out.accepted == out.drafted  # every oracle token is right
        assert out.tokens_per_pass == pytest.approx(39 / out.passes)
        assert out.passes == -(-39 // (k + 1))  # k + 1 tokens a pass: ceil(39 / (k + 1))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prompt_lookup_gives_the_greedy_tokens(lively_model, no_fused_step, dtype: str) -> None:
    """Real drafts, right and wrong, on many prompts and models: greedy's tokens and
    scores, whatever the draft length."""
    accepted = 0
    for seed in range(3):
        model = make(lively_model, dtype, seed)
        for prompt in range(4):
            ids, real = repetitive_prompt(model.config.vocab_size, 10 * seed + prompt)
            plain = generate(model, ids, max_new_tokens=30)
            for k in (1, 3, 7):
                out = speculate(model, ids, real, max_new_tokens=30, prompt_lookup=k)
                assert torch.equal(out.sequences, plain.sequences), (seed, prompt, k)
                assert torch.equal(out.scores, plain.scores)
                accepted += out.accepted
    assert accepted > 0


def test_logits_rules_stops_and_streaming_as_plain_greedy(lively_model, no_fused_step) -> None:
    model = lively_model(3, eos_boost=3.0)
    ids, real = repetitive_prompt(model.config.vocab_size, 4)
    options = [
        dict(repetition_penalty=1.3),
        dict(no_repeat_ngram_size=3),
        dict(min_new_tokens=12),
        dict(),  # eos_boost: rows end early
    ]
    for extra in options:
        plain = generate(model, ids, max_new_tokens=25, **extra)
        out = speculate(model, ids, real, max_new_tokens=25, prompt_lookup=5, **extra)
        assert torch.equal(out.sequences, plain.sequences), extra
        assert torch.equal(out.scores, plain.scores)

    def stop(rows: torch.Tensor) -> torch.Tensor:
        return rows[:, -1] == int(plain.sequences[0, ids.shape[1] + 6])

    streamed: list[int] = []
    plain = generate(model, ids, max_new_tokens=25, stop=stop)
    with DecodingBatch(model, fused_step=False) as batch:
        config = GenerationConfig(max_new_tokens=25, prompt_lookup=5)
        out = prompt_lookup_greedy(batch, ids, real, config, stop, streamed.append)
    assert torch.equal(out.sequences, plain.sequences)
    assert streamed == out.sequences[0, ids.shape[1] :].tolist()


def test_generate_speculates_where_it_is_exact(lively_model, no_fused_step) -> None:
    model = lively_model(2)
    ids, _ = repetitive_prompt(model.config.vocab_size, 5)
    out = generate(model, ids, max_new_tokens=30, prompt_lookup=4)
    assert isinstance(out, SpeculativeOutput) and out.passes > 0
    assert torch.equal(out.sequences, generate(model, ids, max_new_tokens=30).sequences)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_generate_speculates_on_the_fused_step_with_its_tokens(lively_model, dtype: str) -> None:
    """On the fused C step a draft is verified as rows of one step, each token computed as
    its own step computes it: one prompt speculates, with plain greedy's tokens and scores
    bit for bit; a batch of several rows decodes one token a step, as without it."""
    model = make(lively_model, dtype)
    if FusedStep.build(model) is None:
        pytest.skip("the fused step does not run this model here")
    ids, _ = repetitive_prompt(model.config.vocab_size, 6)
    for prompts in (ids, ids.repeat(2, 1)):
        plain = generate(model, prompts, max_new_tokens=20)
        out = generate(model, prompts, max_new_tokens=20, prompt_lookup=4)
        assert isinstance(out, SpeculativeOutput) == (prompts.shape[0] == 1)
        assert torch.equal(out.sequences, plain.sequences)
        assert torch.equal(out.scores, plain.scores)


@pytest.mark.parametrize("fused", [True, False], ids=["fused step", "op by op"])
def test_mini_copies_a_repeated_sentence_several_tokens_a_pass(fused: bool, request) -> None:
    """The bundled `mini` model continues a sentence said twice by saying it again: drafts
    from the prompt are accepted, and the tokens are still greedy's."""
    if not fused:
        request.getfixturevalue("no_fused_step")
    model = BioGPT.from_pretrained("mini")
    sentence = [2, 4805, 9, 656, 21, 17, 1334, 11, 4, 1061, 1129, 5, 14, 371, 1220, 4]
    ids = torch.tensor([sentence + sentence[1:] + sentence[1:]])
    plain = generate(model, ids, max_new_tokens=32)
    out = generate(model, ids, max_new_tokens=32, prompt_lookup=6)
    assert torch.equal(out.sequences, plain.sequences)
    assert isinstance(out, SpeculativeOutput) and out.tokens_per_pass > 1.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(prompt_lookup=8), "prompt_lookup must be in 0..7"),
        (dict(prompt_lookup=-1), "prompt_lookup must be in 0..7"),
        (dict(prompt_lookup=2, do_sample=True), "works with greedy decoding"),
        (dict(prompt_lookup=2, num_beams=2), "works with greedy decoding"),
    ],
)
def test_options_that_cannot_speculate_are_refused(options: dict, message: str) -> None:
    with pytest.raises(BioGPTError, match=message):
        GenerationConfig(**options).validate()
