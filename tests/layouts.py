"""Checkpoint layouts built by hand for tests: fairseq pickles, as fairseq writes them."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from biogpt import BioGPT

FAIRSEQ_HPARAMS = dict(
    decoder_layers=2, decoder_embed_dim=64, decoder_attention_heads=4, decoder_ffn_embed_dim=128,
    max_target_positions=64, tokens_per_sample=64, dropout=0.1, attention_dropout=0.1,
    activation_dropout=0.0, share_decoder_input_output_embed=True, no_scale_embedding=False,
    activation_fn="gelu", decoder_normalize_before=True, decoder_learned_pos=True,
    arch="transformer_lm_biogpt",
)  # fmt: skip


def fairseq_checkpoint(path: Path, model: BioGPT, style: str = "cfg-namespace", **extra) -> Path:
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
