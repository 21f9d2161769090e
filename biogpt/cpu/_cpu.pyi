# Types of the compiled extension built from _cpu.c (setup.py). Every tensor is passed as
# its address (`Tensor.data_ptr()`); the callers check shapes and dtypes first.

def supported() -> bool: ...
def bf16_dot() -> bool: ...
def gemv(
    w: int, s: int, x: int, b: int, y: int, m: int, n: int, k: int, threads: int, kind: int
) -> None: ...
def decode_step(
    plan: int,
    keys: int,
    values: int,
    mask: int,
    tokens: int,
    positions: int,
    cache_rows: int,
    slots: int,
    rows: int,
    batch: int,
    logits: int,
    threads: int,
    embed_scale: float,
    eps: float,
) -> None: ...
def gelu(x: int, y: int, n: int) -> None: ...
