"""The public model classes: the architecture of `biogpt.model` with loading, saving and
decoding added.

The architecture knows neither checkpoints nor decoding nor the CPU engine; each of those
imports the model, so the model cannot import them back. These classes sit above all of
them and are what `from biogpt import BioGPT` gives:

    model = BioGPT.from_pretrained("mini")            # or a directory, a file, a Hub id
    ids = model.generate(prompt_ids, max_new_tokens=32)
    model.save_pretrained("out/model")

Every function that takes a model takes the bare architecture too (`biogpt.model.BioGPT`,
of which these are subclasses).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from biogpt import cpu, model
from biogpt.checkpoint import load_model, save_model
from biogpt.decoding import GenerationOutput, generate
from biogpt.errors import BioGPTError

_M = TypeVar("_M", bound="Pretrained")


class Pretrained:
    """Loading and saving, for any of the architecture's classes."""

    @classmethod
    def from_pretrained(
        cls: type[_M],
        path_or_id: str | Path,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        trust_pickle: bool = False,
        num_labels: int | None = None,
    ) -> _M:
        """Load a Hugging Face directory, a fairseq directory or file, a bundled model
        ("mini") or a Hub id, in eval mode.

        `dtype` casts the weights (`torch.bfloat16` or "bf16", ...; float32 by default);
        "int8" loads fp32 and quantises the linear layers for CPU decoding
        (`biogpt.cpu.quantize_int8`). `device` moves them. Pickled `.pt`/`.bin` files
        load with `weights_only=True` unless `trust_pickle`. `num_labels` sizes a fresh
        classification head (classification models only).
        """
        int8 = isinstance(dtype, str) and dtype.lower() == "int8"
        if int8 and device is not None and torch.device(device).type != "cpu":
            raise BioGPTError("dtype int8 runs on the CPU only")
        loaded = load_model(
            cls,  # type: ignore[arg-type]  # cls is one of the architecture's subclasses
            path_or_id,
            dtype=torch.float32 if int8 else dtype,
            device=device,
            trust_pickle=trust_pickle,
            num_labels=num_labels,
        )
        if int8:
            cpu.quantize_int8(loaded)
        return loaded  # type: ignore[return-value]

    def save_pretrained(self, directory: str | Path, overwrite: bool = False) -> None:
        """Write the Hugging Face layout (`config.json` + `model.safetensors`)."""
        save_model(self, directory, overwrite=overwrite)  # type: ignore[arg-type]

    def quantize_int8(self) -> None:
        """Int8 linear layers for fast CPU decoding: `biogpt.cpu.quantize_int8(self)`."""
        cpu.quantize_int8(self)  # type: ignore[arg-type]

    def pack(self, rows: int = 1) -> bool:
        """Deprecated: `biogpt.cpu.prepare(model, rows)`."""
        warnings.warn(
            "model.pack() moved to biogpt.cpu.prepare(model, rows)", DeprecationWarning, 2
        )
        return cpu.prepare(self, rows)  # type: ignore[arg-type]

    def unpack(self) -> None:
        """Deprecated: `biogpt.cpu.release(model)`."""
        warnings.warn("model.unpack() moved to biogpt.cpu.release(model)", DeprecationWarning, 2)
        cpu.release(self)  # type: ignore[arg-type]


class BioGPT(Pretrained, model.BioGPT):
    """BioGPT causal language model: the decoder and an output projection tied to embeddings."""

    def generate(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **options: Any
    ) -> Any:
        """Continue the prompts: token ids (B * num_return_sequences, L), prompts included.

        Options are those of `biogpt.decoding.GenerationConfig` (max_new_tokens, num_beams,
        do_sample, top_p, ...); `return_scores=True` returns a `GenerationOutput` instead.
        On the CPU this prepares the model for inference (`biogpt.cpu`) and leaves it so.
        """
        return_scores = options.pop("return_scores", False)
        out: GenerationOutput = generate(self, input_ids, attention_mask, **options)
        return out if return_scores else out.sequences


class BioGPTForSequenceClassification(Pretrained, model.BioGPTForSequenceClassification):
    """Classifies a sequence from the hidden state of its last real token (`score`, no bias)."""


class BioGPTForTokenClassification(Pretrained, model.BioGPTForTokenClassification):
    """Labels every token from its hidden state (`classifier`, with bias)."""
