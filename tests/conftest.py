"""Helpers the tests share, as fixtures: small random models and hand-built checkpoints.

Every test runs on the CPU in seconds with tiny configs; no test needs the network.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from biogpt import BioGPT
from biogpt.config import ModelConfig


def _lively_model(seed: int, eos_boost: float = 1.0, **overrides) -> BioGPT:
    """A random tiny model whose greedy output is not one token repeated. With the default
    init the scaled token embedding dominates the residual stream and the tied head predicts
    the input token again; small embeddings and wide layer weights make the logits depend on
    the context. `eos_boost` scales the `</s>` embedding (tied to its output row) so that
    hypotheses end early and often."""
    config = ModelConfig.from_name("tiny", dropout=0.0, attention_dropout=0.0, **overrides)
    torch.manual_seed(seed)
    model = BioGPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02 if "embed_tokens" in name else 0.5)
        model.biogpt.embed_tokens.weight[2] *= eos_boost
    return model


@pytest.fixture
def lively_model() -> Callable[..., BioGPT]:
    """`lively_model(seed, eos_boost=1.0, **config overrides)`: see `_lively_model`."""
    return _lively_model


FAIRSEQ_HPARAMS = dict(
    decoder_layers=2, decoder_embed_dim=64, decoder_attention_heads=4, decoder_ffn_embed_dim=128,
    max_target_positions=64, tokens_per_sample=64, dropout=0.1, attention_dropout=0.1,
    activation_dropout=0.0, share_decoder_input_output_embed=True, no_scale_embedding=False,
    activation_fn="gelu", decoder_normalize_before=True, decoder_learned_pos=True,
    arch="transformer_lm_biogpt",
)  # fmt: skip


def _fairseq_checkpoint(path: Path, model: BioGPT, style: str = "cfg-namespace", **extra) -> Path:
    """Write `model` as fairseq does: `decoder.*` weights under `model`, hyper-parameters
    under `cfg["model"]` (Namespace or dict) or `args`, plus the usual bookkeeping."""
    weights = {}
    for key, value in model.state_dict().items():
        name = (
            key.replace("biogpt.", "decoder.", 1) if key.startswith("biogpt.") else f"decoder.{key}"
        )
        weights[name] = value.clone()
    weights["decoder.version"] = torch.tensor([3.0])
    c = model.config
    hparams = dict(
        FAIRSEQ_HPARAMS,
        decoder_layers=c.num_layers,
        decoder_embed_dim=c.hidden_size,
        decoder_attention_heads=c.num_heads,
        decoder_ffn_embed_dim=c.intermediate_size,
        max_target_positions=c.max_positions,
        tokens_per_sample=c.max_positions,
    )
    data = {"model": weights, "extra_state": {"epoch": 3}, "optimizer_history": [], **extra}
    if style == "cfg-namespace":
        data["cfg"] = {
            "model": argparse.Namespace(**hparams),
            "task": {"_name": "language_modeling"},
        }
    elif style == "cfg-dict":
        data["cfg"] = {"model": hparams}
    else:
        data["args"] = argparse.Namespace(**hparams)
    torch.save(data, path)
    return path


@pytest.fixture
def fairseq_checkpoint() -> Callable[..., Path]:
    """`fairseq_checkpoint(path, model, style="cfg-namespace", **extra)`: see
    `_fairseq_checkpoint`."""
    return _fairseq_checkpoint
