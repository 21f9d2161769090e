"""Decoding: turning a model and prompts into tokens and text.

- `search`: `generate`, the entry point: checks, then greedy decoding, sampling or beam search.
- `config`: `GenerationConfig`, every option and its default, once.
- `steps`: `DecodingBatch`, the one step API: rows join and leave a running batch; where
  the step (fused C, compiled, op by op) and the CPU packing are decided.
- `greedy`, `beam`: the strategies, written on `DecodingBatch`.
- `logits`: the rules that reshape next-token scores (repetition, n-grams, top-k, top-p).
- `static_step`: a fixed-shape step for torch.compile and CUDA graphs.
- `output`: `GenerationOutput` and the callbacks decoding takes.
- `completion`: text in, text out (stop strings, streaming); `scoring`: a text's log-probability.
"""

from biogpt.decoding.config import GenerationConfig
from biogpt.decoding.output import GenerationOutput
from biogpt.decoding.search import generate, left_pad
from biogpt.decoding.steps import DecodingBatch

__all__ = ["DecodingBatch", "GenerationConfig", "GenerationOutput", "generate", "left_pad"]
