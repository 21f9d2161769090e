"""BioGPT: a biomedical GPT-2-style decoder, its tokenizer, checkpoints and task pipelines."""

from biogpt import _moved
from biogpt.api import BioGPT, BioGPTForSequenceClassification, BioGPTForTokenClassification
from biogpt.config import ModelConfig
from biogpt.errors import BioGPTError
from biogpt.tokenizer import Tokenizer

__all__ = [
    "BioGPT",
    "BioGPTError",
    "BioGPTForSequenceClassification",
    "BioGPTForTokenClassification",
    "ModelConfig",
    "Tokenizer",
]
__version__ = "0.1.0"

_moved.install()  # old module paths (biogpt.generation, ...) for one more release
