"""BioGPT: a biomedical GPT-2-style decoder, its tokenizer, checkpoints and task pipelines."""

from biogpt.config import ModelConfig
from biogpt.errors import BioGPTError

__all__ = ["BioGPTError", "ModelConfig"]
__version__ = "0.1.0"
