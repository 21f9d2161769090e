"""BioGPT's tokenizer: Moses word tokenization, BPE, and the released vocabularies."""

from biogpt.tokenizer.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
