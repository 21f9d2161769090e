"""The C allocator's policy for long jobs that make tensors of many sizes.

A job that runs prompts of every length through the model (mining a corpus) frees and
allocates blocks of as many sizes. glibc keeps freed blocks below its mmap threshold in the
heap, and raises that threshold as large blocks are freed, so the heap keeps holes it
cannot give back and the resident size creeps up with the number of documents. Two
remedies: `trim_heap` gives the free pages inside the heap back (cheap, between batches),
and `fix_mmap_threshold` sends every block above a size to its own mapping, returned when
freed (flatter still, but each such block faults its pages in again: it costs time).
`benchmarks/mine.py` measures the peak at one and ten times the documents, and the time,
with each.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 1024 * 1024


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Allocate blocks of `threshold` bytes and more in mappings of their own, for the rest
    of the process (what `MALLOC_MMAP_THRESHOLD_` does at start-up). Returns whether it was
    set: False where the C library is not glibc, or where the user set the variable (theirs
    wins)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(threshold)))


def trim_heap() -> bool:
    """Give the heap's free pages back to the system (glibc's `malloc_trim`, which also
    releases the free pages inside the heap, not only at its top): a long job calls it
    between batches so that the holes its freed tensors leave do not stay resident. Returns
    whether anything was given back; False where the C library is not glibc."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(ctypes.c_size_t(0)))
