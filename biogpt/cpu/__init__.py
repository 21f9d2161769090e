"""The optional CPU inference engine: what makes decoding fast on a CPU, kept apart from the
model, which knows nothing of it.

- `packing`: preparing a model for inference (linear layers swapped for packed, gemv or
  int8 ones, q/k/v fused) and releasing it again; the layers themselves.
- `gemv`: the compiled kernel that multiplies 1 to 8 rows by a weight matrix in one pass.
- `fused`: one whole decoding step of 1 to 8 rows in one compiled call.
- `_cpu.c`: the C source of both (built by setup.py where a compiler is at hand).
"""
