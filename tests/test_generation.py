"""Decoding against transformers' generate(), and the engine's own invariants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biogpt import BioGPT
from biogpt.decoding import GenerationConfig, generate
from biogpt.decoding.logits import (
    block_repeated_ngrams,
    penalize_repetitions,
    top_k_filter,
    top_p_filter,
)
from biogpt.errors import BioGPTError
from biogpt.model import one_query_attention_fp32

transformers = pytest.importorskip("transformers")


def hf_twin(model: BioGPT):
    hf_config = {
        k: v
        for k, v in model.config.to_hf_dict().items()
        if k not in ("model_type", "architectures")
    }
    hf = transformers.BioGptForCausalLM(transformers.BioGptConfig(**hf_config)).eval()
    hf.load_state_dict(model.state_dict(), strict=False)
    return hf


def prompts(seed: int, rows: int = 4, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts of different lengths, each starting with `</s>`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 512, (rows, length), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    for r in range(1, rows):
        pad = (r * 2) % (length - 2)
        ids[r, :pad], mask[r, :pad] = 1, 0
        ids[r, pad] = 2
    return ids, mask


CONFIGS = [
    {"max_new_tokens": 20},
    {"max_new_tokens": 15, "repetition_penalty": 1.3, "no_repeat_ngram_size": 3},
    {"max_new_tokens": 20, "min_new_tokens": 8},
    {"max_new_tokens": 20, "num_beams": 4},
    {"max_new_tokens": 20, "num_beams": 4, "early_stopping": True},
    {"max_new_tokens": 25, "num_beams": 5, "early_stopping": "never", "length_penalty": 2.0},
    {
        "max_new_tokens": 30,
        "num_beams": 3,
        "min_new_tokens": 5,
        "length_penalty": 0.5,
        "no_repeat_ngram_size": 2,
        "num_return_sequences": 2,
    },
    {"max_new_tokens": 12, "num_beams": 6, "num_return_sequences": 6, "length_penalty": -0.5},
]


@pytest.mark.parametrize(
    "options", CONFIGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
@pytest.mark.parametrize("seed,eos_boost", [(0, 1.0), (1, 2.5), (2, 2.5), (3, 3.0)])
def test_matches_transformers(lively_model, options: dict, seed: int, eos_boost: float) -> None:
    model = lively_model(seed, eos_boost)
    hf = hf_twin(model)
    ids, mask = prompts(seed + 10)
    ours = model.generate(ids, mask, **options)
    with torch.inference_mode():
        theirs = hf.generate(
            ids, attention_mask=mask, do_sample=False, pad_token_id=1, eos_token_id=2, **options
        )
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    # Not degenerate: the rows say different things.
    new = ours[:, ids.shape[1] :].tolist()
    assert sum(len(set(row)) for row in new) > 4 * len(new)


def test_eos_prone_models_do_end_early(lively_model) -> None:
    """The eos-boosted configurations above exercise hypotheses that finish before the end."""
    model = lively_model(1, 2.5)
    ids, mask = prompts(11)
    out = model.generate(ids, mask, max_new_tokens=20, num_beams=4, return_scores=True)
    assert (out.sequences[:, ids.shape[1] :] == 2).any()


@pytest.mark.parametrize("options", [CONFIGS[1], CONFIGS[3], CONFIGS[6]])
def test_batched_equals_one_by_one_left_and_right_padding(lively_model, options: dict) -> None:
    model = lively_model(4, 2.0)
    ids, mask = prompts(21)
    left = model.generate(ids, mask, **options)
    # The same prompts right-padded: real tokens moved to the front of each row.
    right_ids, right_mask = torch.ones_like(ids), torch.zeros_like(mask)
    for r in range(ids.shape[0]):
        real = ids[r][mask[r].bool()]
        right_ids[r, : real.numel()], right_mask[r, : real.numel()] = real, 1
    right = model.generate(right_ids, right_mask, **options)
    n_ret = options.get("num_return_sequences", 1)
    width = ids.shape[1]
    for r in range(ids.shape[0]):
        alone = model.generate(ids[r : r + 1][:, mask[r].bool()], **options)
        for j in range(n_ret):
            row = r * n_ret + j
            new_alone = alone[j, mask[r].sum() :].tolist()
            for batch_out in (left, right):
                new = batch_out[row, width:].tolist()
                new = new[: len(new_alone)]
                assert new == new_alone
                assert all(t == 1 for t in batch_out[row, width + len(new_alone) :].tolist())


def test_cached_decoding_equals_uncached_argmax(lively_model) -> None:
    model = lively_model(5)
    ids, _ = prompts(31, rows=1)
    out = model.generate(ids, max_new_tokens=12)
    seq = ids
    with torch.inference_mode():
        for _ in range(12):
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
            if int(nxt) == 2:
                break
    assert torch.equal(out, seq)


def test_sampling_with_seed_is_reproducible_and_seeds_differ(lively_model) -> None:
    model = lively_model(6)
    ids, mask = prompts(41)
    opts = {"do_sample": True, "max_new_tokens": 16, "top_k": 50, "top_p": 0.9, "temperature": 0.8}
    a = model.generate(ids, mask, seed=7, **opts)
    b = model.generate(ids, mask, seed=7, **opts)
    c = model.generate(ids, mask, seed=8, **opts)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampling_respects_top_k_one(lively_model) -> None:
    """Sampling restricted to the single likeliest token is greedy decoding."""
    model = lively_model(7)
    ids, mask = prompts(51)
    greedy = model.generate(ids, mask, max_new_tokens=10)
    sampled = model.generate(ids, mask, max_new_tokens=10, do_sample=True, top_k=1, seed=3)
    assert torch.equal(greedy, sampled)


def test_greedy_scores_are_token_logprobs(lively_model) -> None:
    model = lively_model(8)
    ids, _ = prompts(61, rows=1)
    out = model.generate(ids, max_new_tokens=5, return_scores=True)
    with torch.inference_mode():
        logp = model(out.sequences).logits.float().log_softmax(-1)
    new = out.sequences[0, ids.shape[1] :]
    expected = logp[0, ids.shape[1] - 1 : -1].gather(1, new[:, None])[:, 0]
    assert torch.allclose(out.scores[0], expected, atol=1e-5)


def test_stop_criterion_ends_rows(lively_model) -> None:
    model = lively_model(9)
    ids, mask = prompts(71)
    full = model.generate(ids, mask, max_new_tokens=10)
    target = int(full[0, ids.shape[1] + 2])

    def stop(rows: torch.Tensor) -> torch.Tensor:
        return rows[:, -1] == target

    out = generate(model, ids, mask, max_new_tokens=10, stop=stop).sequences
    first = out[0, ids.shape[1] :].tolist()
    assert (
        first[: first.index(target) + 1]
        == full[0, ids.shape[1] :].tolist()[: first.index(target) + 1]
    )
    assert all(t == 1 for t in first[first.index(target) + 1 :])


# --- Logits processing, hand-computed ----------------------------------------------------------


def test_top_k_and_top_p_filters() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(top_k_filter(logits, 2)[0, [0, 3]]).all()
    assert top_k_filter(logits, 2)[0, 1] == 3.0
    probs = logits.softmax(-1)[0]  # about 0.09, 0.67, 0.24, 0.03
    kept = ~torch.isinf(top_p_filter(logits, 0.7)[0])
    assert kept.tolist() == [False, True, True, False]
    kept = ~torch.isinf(top_p_filter(logits, float(probs[1]) - 0.01)[0])
    assert kept.tolist() == [False, True, False, False]


def test_repetition_penalty_and_ngram_blocking() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 4.0]])
    tokens = torch.tensor([[0, 1]])
    real = torch.ones_like(tokens, dtype=torch.bool)
    out = penalize_repetitions(logits, tokens, real, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, 4.0]]
    # Row 0 1 2 0 1: the 3-gram (0, 1, 2) exists, so after (0, 1) token 2 is banned.
    tokens = torch.tensor([[0, 1, 2, 0, 1]])
    real = torch.ones_like(tokens, dtype=torch.bool)
    blocked = block_repeated_ngrams(logits, tokens, real, 3)
    assert torch.isinf(blocked[0, 2]) and not torch.isinf(blocked[0, [0, 1, 3]]).any()
    # Padding never bans: the same n-gram touching a padding slot is ignored.
    real[0, 2] = False
    assert not torch.isinf(block_repeated_ngrams(logits, tokens, real, 3)).any()


# --- Errors before any work ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"min_new_tokens": 9, "max_new_tokens": 5}, "min_new_tokens"),
        ({"temperature": 0.5}, "do_sample"),
        ({"do_sample": True, "num_beams": 2}, "beams"),
        ({"num_return_sequences": 3}, "num_return_sequences"),
        ({"length_penalty": 2.0}, "beam search"),
        ({"top_p": 0.0, "do_sample": True}, "top_p"),
        ({"early_stopping": "sometimes", "num_beams": 2}, "early_stopping"),
        ({"max_new_token": 5}, "unknown generation option"),
    ],
)
def test_bad_options_are_refused(lively_model, options: dict, message: str) -> None:
    model = lively_model(0)
    with pytest.raises(BioGPTError, match=message):
        model.generate(torch.tensor([[2, 5]]), **options)


def test_bad_prompts_are_refused(lively_model) -> None:
    model = lively_model(0)
    with pytest.raises(BioGPTError, match="empty prompt"):
        model.generate(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(BioGPTError, match="positions"):
        model.generate(torch.full((1, 60), 5), max_new_tokens=10)
    with pytest.raises(BioGPTError, match="no real tokens"):
        model.generate(torch.tensor([[2, 5]]), torch.tensor([[0, 0]]))
    with pytest.raises(BioGPTError, match="outside the vocabulary"):
        model.generate(torch.tensor([[2, 999]]), max_new_tokens=5)


def test_config_validate_accepts_defaults() -> None:
    GenerationConfig().validate()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("length", [20, 90])  # SDPA, then the fp32 path
def test_half_one_query_attention_matches_the_full_forward(lively_model, dtype, length) -> None:
    """A bf16 or fp16 decoding step on CPU attends in fp32 (faster than SDPA's half
    kernels there); its logits must agree with the uncached forward pass."""
    model = lively_model(12, max_positions=128).to(dtype)
    ids = torch.randint(4, 512, (2, length), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # one row left-padded: the mask path of the fp32 attention
    with torch.inference_mode():
        full = model(ids, mask).logits[:, -1].float()
        cache = model.new_cache(2, length)
        model(ids[:, :-1], mask[:, :-1], cache=cache)
        step = model(ids[:, -1:], mask[:, -1:], cache=cache).logits[:, -1].float()
    scale = full.abs().max()
    assert (step - full).abs().max() < 0.02 * scale


def test_fp32_one_query_attention_is_attention() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g).bfloat16() for n in (1, 11, 11))
    mask = torch.ones(2, 1, 1, 11, dtype=torch.bool)
    mask[1, ..., :4] = False
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    got = one_query_attention_fp32(q, k, v, mask)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.double(), want, atol=1e-2)
    assert (got.double() - want).abs().max() <= 2**-8 * want.abs().max() + 1e-6


def test_the_model_attends_one_half_precision_query_in_fp32_on_the_cpu() -> None:
    """Prepared or not, a bf16 model attends a single new token over a long cache in fp32."""
    from biogpt.model import attend

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, n, 16).to(torch.bfloat16) for n in (1, 40, 40))
    assert torch.equal(attend(q, k, v, None, 0.0), one_query_attention_fp32(q, k, v, None))
