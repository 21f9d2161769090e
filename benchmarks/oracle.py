"""The contender every benchmark measures against: transformers' BioGptForCausalLM."""

from __future__ import annotations

import torch

from biogpt.model import BioGPT


def hf_twin(model: BioGPT) -> torch.nn.Module:
    """transformers' `BioGptForCausalLM` with `model`'s config and weights, on its device
    (in eval mode; call `.train()` to time training)."""
    import transformers

    skip = ("model_type", "architectures")
    config = {k: v for k, v in model.config.to_hf_dict().items() if k not in skip}
    hf = transformers.BioGptForCausalLM(transformers.BioGptConfig(**config))
    hf.load_state_dict(model.state_dict(), strict=False)
    return hf.to(model.device).eval()
