"""Checkpoints in and out: every layout BioGPT weights are found in, read, checked and built.

- `pipeline`: read -> check -> build -> save for Hugging Face directories, fairseq files,
  Hub ids and the bundled models; `convert` between layouts; the tokenizer beside a model.
- `fairseq`: fairseq's pickled `checkpoint.pt`, its names and hyper-parameters.
- `tensors`: the file readers (safetensors without a memory map, pickles with
  `weights_only`) that both layouts use.
"""

from biogpt.checkpoint.pipeline import (
    BUNDLED_MODELS,
    build_model,
    checkpoint_hash,
    convert,
    load_model,
    read_checkpoint,
    resolve_dtype,
    save_model,
    tokenizer_for,
)

__all__ = [
    "BUNDLED_MODELS",
    "build_model",
    "checkpoint_hash",
    "convert",
    "load_model",
    "read_checkpoint",
    "resolve_dtype",
    "save_model",
    "tokenizer_for",
]
