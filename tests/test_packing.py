"""Prepacked CPU weights: same results, same state dict, undone before training or casting."""

from __future__ import annotations

import pytest
import torch

from biogpt.config import ModelConfig
from biogpt.model import BioGPT
from biogpt.packing import PackedLinear, can_pack, is_packed

pytestmark = pytest.mark.skipif(
    not can_pack(BioGPT(ModelConfig.from_name("tiny")).eval()), reason="oneDNN not available"
)


def model() -> BioGPT:
    torch.manual_seed(0)
    return BioGPT(ModelConfig.from_name("tiny")).eval()


def test_packed_forward_matches_and_state_dict_is_unchanged() -> None:
    m = model()
    ids = torch.randint(4, 512, (2, 9))
    before = m(ids).logits
    state = {k: v.clone() for k, v in m.state_dict().items()}
    assert m.pack() and is_packed(m)
    # Per layer: fused qkv, out, fc1, fc2; plus the head.
    assert sum(isinstance(x, PackedLinear) for x in m.modules()) == 2 * 4 + 1
    assert torch.allclose(m(ids).logits, before, atol=1e-5)
    packed_state = m.state_dict()
    assert packed_state.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(packed_state[k], v), k


def test_training_casting_and_loading_unpack() -> None:
    m = model()
    m.pack()
    m.train()
    assert not is_packed(m)
    assert m.output_projection.weight is m.biogpt.embed_tokens.weight  # tied again
    m.eval().pack()
    m.to(torch.bfloat16)
    assert not is_packed(m) and m.biogpt.layers[0].fc1.weight.dtype == torch.bfloat16
    m.pack()
    m.load_state_dict(model().to(torch.bfloat16).state_dict())
    assert not is_packed(m)


def test_training_mode_is_never_packed() -> None:
    m = model().train()
    assert not m.pack()


def test_parameter_count_is_the_same_packed() -> None:
    m = model()
    count = m.num_parameters()
    assert count == m.config.num_parameters()
    m.pack()
    assert m.num_parameters() == count
