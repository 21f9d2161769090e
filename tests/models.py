"""Small random models for decoding tests."""

from __future__ import annotations

import torch

from biogpt import BioGPT
from biogpt.config import ModelConfig


def lively_model(seed: int, eos_boost: float = 1.0, **overrides) -> BioGPT:
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
