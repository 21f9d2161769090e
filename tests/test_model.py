"""The model against transformers' BioGPT (the oracle), plus padding, cache, heads and loss.

Every comparison copies our randomly initialised weights into the transformers model, so
any difference is a difference in computation, not in weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biogpt import BioGPT, BioGPTForSequenceClassification, BioGPTForTokenClassification
from biogpt.cache import padding_positions
from biogpt.config import ModelConfig
from biogpt.labels import IGNORE_INDEX

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
PAD = 1

# Small shapes that vary every dimension, including an untied head and unscaled embeddings.
CONFIGS = {
    "one-layer": dict(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64,
                      vocab_size=100, max_positions=32),
    "three-layers": dict(num_layers=3, hidden_size=48, num_heads=6, intermediate_size=80,
                         vocab_size=257, max_positions=40),
    "unscaled": dict(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=256,
                     vocab_size=512, max_positions=64, scale_embedding=False),
    "untied": dict(num_layers=2, hidden_size=40, num_heads=5, intermediate_size=72,
                   vocab_size=301, max_positions=20, tie_word_embeddings=False),
}  # fmt: skip


def make_config(**overrides) -> ModelConfig:
    return ModelConfig.from_name("tiny", **overrides)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights: fresh init leaves biases at 0 and LayerNorms at 1, hiding bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.1
            p.copy_(1 + noise if "layer_norm.weight" in name else noise)
    return model


def ours_and_hf(cls=BioGPT, hf_cls_name="BioGptForCausalLM", seed=0, **overrides):
    """Our model with random weights and the transformers model holding the same weights."""
    config = make_config(**overrides)
    torch.manual_seed(seed)
    ours = randomise(cls(config), seed).eval()
    hf_config = transformers.BioGptConfig(**config.to_hf_dict())
    hf = getattr(transformers, hf_cls_name)(hf_config).eval()
    result = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= {"output_projection.weight"}  # tied: same tensor
    return ours, hf


def random_ids(config: ModelConfig, batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Ids 3.. so no real token is the padding id (the classifier pools on non-padding ids).
    return torch.randint(3, config.vocab_size, (batch, length), generator=generator)


def pad_batch(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad 1-D id tensors to one length on `side`; returns ids (B, T) and mask (B, T)."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        ids[i, span] = row
        mask[i, span] = 1
    return ids, mask


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# --- Against transformers -----------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_logits_hidden_states_and_loss_match_transformers(name):
    ours, hf = ours_and_hf(**CONFIGS[name])
    ids = random_ids(ours.config, batch=3, length=ours.config.max_positions // 2 + 3)
    mine = ours(ids, labels=ids, output_hidden_states=True)
    theirs = hf(ids, labels=ids, output_hidden_states=True)
    assert max_diff(mine.logits, theirs.logits) <= ATOL
    assert abs(mine.loss.item() - theirs.loss.item()) <= ATOL
    # transformers returns the embedding output, each layer's output, and for the last
    # entry the final LayerNorm's output: ours returns the same layers+1 tensors.
    assert len(mine.hidden_states) == len(theirs.hidden_states) == ours.config.num_layers + 1
    for a, b in zip(mine.hidden_states, theirs.hidden_states, strict=True):
        assert max_diff(a, b) <= ATOL


@torch.no_grad()
def test_right_padding_matches_transformers():
    ours, hf = ours_and_hf(**CONFIGS["three-layers"])
    rows = [random_ids(ours.config, 1, n, seed=n)[0] for n in (9, 4, 7)]
    ids, mask = pad_batch(rows, "right")
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    mine = ours(ids, attention_mask=mask, labels=ids)
    theirs = hf(ids, attention_mask=mask, labels=labels)
    real = mask.bool()
    assert max_diff(mine.logits[real], theirs.logits[real]) <= ATOL
    assert abs(mine.loss.item() - theirs.loss.item()) <= ATOL


@torch.no_grad()
def test_left_padding_matches_transformers_given_position_ids():
    ours, hf = ours_and_hf(**CONFIGS["three-layers"])
    rows = [random_ids(ours.config, 1, n, seed=n)[0] for n in (9, 4, 7)]
    ids, mask = pad_batch(rows, "left")
    # transformers numbers positions from 0 and adds fairseq's offset of 2 itself.
    position_ids = padding_positions(mask, PAD) - 2
    mine = ours(ids, attention_mask=mask)
    theirs = hf(ids, attention_mask=mask, position_ids=position_ids)
    real = mask.bool()
    assert max_diff(mine.logits[real], theirs.logits[real]) <= ATOL


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padding_leaves_real_tokens_unchanged(side):
    ours, _ = ours_and_hf(**CONFIGS["unscaled"])
    rows = [random_ids(ours.config, 1, n, seed=n)[0] for n in (8, 3, 6)]
    ids, mask = pad_batch(rows, side)
    padded = ours(ids, attention_mask=mask).logits
    for i, row in enumerate(rows):
        alone = ours(row[None]).logits[0]
        assert max_diff(padded[i][mask[i].bool()], alone) <= ATOL


@pytest.mark.parametrize(
    "splits", [[1] * 10, [4, 1, 1, 4], [3, 7], [9, 1], [10]], ids=lambda s: "-".join(map(str, s))
)
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@torch.no_grad()
def test_kv_cache_chunks_equal_full_forward(splits, padded):
    ours, _ = ours_and_hf(**CONFIGS["three-layers"])
    lengths = (10, 6, 8) if padded else (10, 10, 10)
    rows = [random_ids(ours.config, 1, n, seed=n)[0] for n in lengths]
    ids, mask = pad_batch(rows, "left")
    full = ours(ids, attention_mask=mask).logits
    cache = ours.new_cache(batch_size=3, capacity=12)
    chunks, start = [], 0
    for size in splits:
        end = start + size
        out = ours(ids[:, start:end], attention_mask=mask[:, start:end], cache=cache)
        chunks.append(out.logits)
        start = end
    chunked = torch.cat(chunks, dim=1)
    real = mask.bool()
    assert max_diff(chunked[real], full[real]) <= ATOL


@pytest.mark.parametrize("num_labels", [2, 5])
@torch.no_grad()
def test_sequence_classification_matches_transformers(num_labels):
    ours, hf = ours_and_hf(
        BioGPTForSequenceClassification, "BioGptForSequenceClassification", num_labels=num_labels
    )
    rows = [random_ids(ours.config, 1, n, seed=n)[0] for n in (9, 4, 7)]
    ids, mask = pad_batch(rows, "right")
    labels = torch.tensor([0, num_labels - 1, 1])
    mine = ours(ids, attention_mask=mask, labels=labels)
    theirs = hf(ids, attention_mask=mask, labels=labels)
    assert mine.logits.shape == (3, num_labels)
    assert max_diff(mine.logits, theirs.logits) <= ATOL
    assert abs(mine.loss.item() - theirs.loss.item()) <= ATOL


@torch.no_grad()
def test_token_classification_matches_transformers():
    ours, hf = ours_and_hf(
        BioGPTForTokenClassification, "BioGptForTokenClassification", num_labels=7
    )
    rows = [random_ids(ours.config, 1, n, seed=n)[0] for n in (9, 4, 7)]
    ids, mask = pad_batch(rows, "right")
    labels = torch.randint(0, 7, ids.shape, generator=torch.Generator().manual_seed(3))
    mine = ours(ids, attention_mask=mask, labels=labels)
    theirs = hf(ids, attention_mask=mask, labels=labels)
    real = mask.bool()
    assert max_diff(mine.logits[real], theirs.logits[real]) <= ATOL
    assert abs(mine.loss.item() - theirs.loss.item()) <= ATOL


# --- Precision, loss, dropout, size -------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_low_precision_forward_is_close_to_fp32(dtype):
    ours, _ = ours_and_hf(**CONFIGS["unscaled"])
    ids = random_ids(ours.config, batch=2, length=12)
    reference = ours(ids).logits
    low = ours.to(dtype)(ids, labels=ids)
    assert low.logits.dtype == dtype
    assert torch.isfinite(low.logits).all() and torch.isfinite(low.loss)
    # bf16 keeps 8 mantissa bits, fp16 11: a few percent of the logit scale is expected.
    scale = reference.abs().max().item()
    assert max_diff(low.logits, reference) <= 0.05 * scale
    assert low.loss.dtype == torch.float32  # the loss is always computed in fp32


@torch.no_grad()
def test_loss_skips_ignore_index_padding_and_masked_labels():
    ours, _ = ours_and_hf(**CONFIGS["one-layer"])
    ids = random_ids(ours.config, batch=2, length=8)
    ids[1, 6:] = PAD  # right padding, also masked out
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = ids.clone()
    labels[0, 3] = IGNORE_INDEX  # skipped explicitly
    labels[0, 5] = PAD  # a padding id among the labels is skipped too
    mask[0, 7] = 0  # and a masked-out label, whatever its id
    out = ours(ids, attention_mask=mask, labels=labels)

    # By hand: logits at t predict the label at t+1; keep the targets that count.
    log_probs = out.logits.log_softmax(dim=-1)
    kept = [
        log_probs[b, t - 1, labels[b, t]]
        for b in range(2)
        for t in range(1, 8)
        if int(labels[b, t]) not in (IGNORE_INDEX, PAD) and mask[b, t] == 1
    ]
    assert len(kept) == 4 + 5  # of 7 targets, row 0 loses t=3, 5, 7; row 1 its padding t=6, 7
    expected = -torch.stack(kept).mean()
    assert abs(out.loss.item() - expected.item()) <= ATOL
    # And the cross-entropy over the unmasked sequence differs, so the masking mattered.
    everything = F.cross_entropy(out.logits[:, :-1].reshape(-1, 100), ids[:, 1:].reshape(-1))
    assert abs(everything.item() - expected.item()) > 1e-3


def test_dropout_is_active_in_training_and_off_in_eval():
    ours, _ = ours_and_hf(**CONFIGS["three-layers"])
    ids = random_ids(ours.config, batch=2, length=10)
    ours.train()
    torch.manual_seed(0)
    first = ours(ids).logits
    second = ours(ids).logits
    assert max_diff(first, second) > 1e-3
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, ours(ids).logits)


def test_parameter_count_of_released_biogpt():
    config = ModelConfig.from_name("biogpt")
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = BioGPT(config)
    assert model.num_parameters() == 346_763_264
    assert config.num_parameters() == 346_763_264
