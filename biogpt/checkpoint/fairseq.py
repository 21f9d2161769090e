"""fairseq checkpoints: BioGPT's original layout, read into our names and config.

A fairseq checkpoint (`checkpoint.pt`) holds the weights under `model`, named `decoder.*`,
and the hyper-parameters under `cfg["model"]` (fairseq >= 0.10) or `args` (older).
Fine-tuned checkpoints append learned prompt-token rows to the embedding, so the shapes
are taken from the weights and only the rest from the hyper-parameters.
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from biogpt.checkpoint.tensors import Unimportable, read_pickle
from biogpt.config import ModelConfig
from biogpt.errors import BioGPTError

TIED_HEAD = "output_projection.weight"  # the output projection's name in our (HF) layout

# fairseq hyper-parameter -> our config field; the weights decide the shapes they can.
_FAIRSEQ_KEYS: dict[str, str] = {
    "decoder_layers": "num_layers",
    "decoder_embed_dim": "hidden_size",
    "decoder_attention_heads": "num_heads",
    "decoder_ffn_embed_dim": "intermediate_size",
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout",
    "decoder_layerdrop": "layerdrop",
    "activation_fn": "activation",
}


def read_fairseq(path: Path, trust_pickle: bool) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Our config and the weights in our (HF) names, from a fairseq checkpoint file."""
    data = read_pickle(path, trust_pickle)
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
        raise BioGPTError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    state = fairseq_to_hf_names(data["model"])
    if "biogpt.embed_tokens.weight" not in state:
        raise BioGPTError(f"{path}: no decoder.embed_tokens.weight among the weights")
    config = fairseq_config(_fairseq_hparams(data), state, path)
    return config, state


def fairseq_to_hf_names(model_state: Mapping[str, Any]) -> dict[str, Tensor]:
    """Rename fairseq `decoder.*` weights to the Hugging Face layout.

    `decoder.version` is bookkeeping, not a weight; the output projection sits outside
    `biogpt.` in the HF layout; everything else swaps `decoder.` for `biogpt.`.
    """
    state: dict[str, Tensor] = {}
    for key, value in model_state.items():
        if key.endswith(".version") or not isinstance(value, Tensor):
            continue
        if key == "decoder.output_projection.weight":
            state[TIED_HEAD] = value
        elif key.startswith("decoder."):
            state["biogpt." + key.removeprefix("decoder.")] = value
        else:
            state[key] = value  # left as is; reported as unexpected if the model lacks it
    return state


def _fairseq_hparams(data: Mapping[str, Any]) -> dict[str, Any]:
    """Hyper-parameters from `cfg["model"]` (fairseq >= 0.10) or `args` (older)."""
    cfg = data.get("cfg")
    candidates = [cfg.get("model") if isinstance(cfg, Mapping) else None, data.get("args")]
    for hp in candidates:
        if isinstance(hp, Mapping):
            return dict(hp)
        if isinstance(hp, argparse.Namespace) or (
            hp is not None and not isinstance(hp, Unimportable) and hasattr(hp, "__dict__")
        ):
            return dict(vars(hp))
    return {}


def fairseq_config(
    hparams: Mapping[str, Any], state: Mapping[str, Tensor], origin: Path
) -> ModelConfig:
    """Our config from fairseq hyper-parameters, with the vocabulary and positions taken
    from the weights: fine-tuned checkpoints append prompt-token rows beyond dict.txt."""
    vocab, hidden = state["biogpt.embed_tokens.weight"].shape
    kwargs: dict[str, Any] = {"vocab_size": vocab, "hidden_size": hidden}
    if "biogpt.embed_positions.weight" in state:
        # fairseq's learned positions have max_positions + padding_idx + 1 rows.
        kwargs["max_positions"] = state["biogpt.embed_positions.weight"].shape[0] - 2
    fc1 = state.get("biogpt.layers.0.fc1.weight")
    if fc1 is not None:
        kwargs["intermediate_size"] = fc1.shape[0]
    kwargs["num_layers"] = count_layers(state) or 1
    for theirs, ours in _FAIRSEQ_KEYS.items():
        if hparams.get(theirs) is not None:
            kwargs[ours] = hparams[theirs]
    if "num_heads" not in kwargs:
        # Head count leaves no trace in the weights; both releases use 64-wide heads.
        kwargs["num_heads"] = max(1, hidden // 64)
        warnings.warn(
            f"{origin}: no decoder_attention_heads in the hyper-parameters; assuming "
            f"{kwargs['num_heads']}",
            stacklevel=7,  # the caller of from_pretrained
        )
    if hparams.get("share_decoder_input_output_embed") is not None:
        kwargs["tie_word_embeddings"] = bool(hparams["share_decoder_input_output_embed"])
    if hparams.get("no_scale_embedding") is not None:
        kwargs["scale_embedding"] = not hparams["no_scale_embedding"]
    if hparams.get("decoder_normalize_before") is False:
        raise BioGPTError(f"{origin}: post-LayerNorm decoders are not supported (BioGPT is pre-LN)")
    try:
        return ModelConfig(**kwargs)
    except (BioGPTError, TypeError) as err:
        raise BioGPTError(f"{origin}: {err}") from None


_LAYER_KEY = re.compile(r"^biogpt\.layers\.(\d+)\.")


def count_layers(state: Mapping[str, Tensor]) -> int:
    """Decoder layers in a state dict of our names (0 if none)."""
    indices = [int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))]
    return max(indices) + 1 if indices else 0
