"""The optional CPU inference engine: what makes decoding fast on a CPU, kept apart from the
model, which knows nothing of it.

    biogpt.cpu.prepare(model, rows=1)   # the engine's layers for `rows` rows a call
    biogpt.cpu.quantize_int8(model)     # int8 linear layers (lossy), for good
    biogpt.cpu.release(model)           # plain layers again: before training, casting...

- `packing`: preparing and releasing, and the lifetime of a prepared model.
- `layers`: the engine's layers (gemv, oneDNN-packed, fp16-weight and int8 linear layers;
  attention over fused q/k/v).
- `gemv`: the compiled kernel that multiplies 1 to 8 rows (64 in fp32) by a weight matrix in
  one pass.
- `fused`: one whole decoding step of 1 to 8 rows in one compiled call (with their drafts,
  up to 64 rows x tokens in fp32).
- `_cpu.c` (with `products.h`, the kernel, and `step.h`, the step): their C source, built by
  setup.py where a compiler is at hand.
"""

from biogpt.cpu.packing import (
    can_prepare,
    is_prepared,
    is_quantized,
    prepare,
    quantize_int8,
    release,
)

__all__ = ["can_prepare", "is_prepared", "is_quantized", "prepare", "quantize_int8", "release"]
