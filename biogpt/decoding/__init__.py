"""Decoding: turning a model and prompts into text.

- `search`: `generate` with greedy decoding, sampling and beam search; `GenerationConfig`.
- `logits`: the rules that reshape next-token scores (repetition, n-grams, top-k, top-p).
- `static_step`: a fixed-shape step for torch.compile and CUDA graphs.
- `completion`: text in, text out (stop strings, streaming).
- `scoring`: the log-probability of a given text.
"""

from biogpt.decoding.config import GenerationConfig
from biogpt.decoding.search import GenerationOutput, generate, left_pad

__all__ = ["GenerationConfig", "GenerationOutput", "generate", "left_pad"]
