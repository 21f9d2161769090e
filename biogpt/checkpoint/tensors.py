"""Reading weight files safely: safetensors, and pickles with or without full unpickling.

`.bin`/`.pt` files load with `torch.load(weights_only=True)`; a file that needs more is
refused with a one-line error unless the caller trusts it. Trusted fairseq pickles load
without fairseq installed: classes that cannot be imported become inert placeholders.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import types
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from biogpt.errors import BioGPTError

# safetensors' dtype names, and what they are here.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: Path, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """The tensors of a safetensors file, read into memory of their own with plain reads;
    floating-point ones cast to `dtype` one at a time, if given.

    The format: an 8-byte little-endian header length, a JSON header naming each tensor's
    dtype, shape and byte range, then the data. (The safetensors library maps the file and
    reads tensors in place: every page read then stays resident while any tensor of the file
    lives, so converting or quantising a model held both copies.)"""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, 2)
            f.seek(0)
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= end - 8:
                raise ValueError(f"a header of {size} bytes in a file of {end}")
            header = json.loads(f.read(size))
            start = 8 + size
            tensors = {}
            for name, info in header.items():
                if name != "__metadata__":
                    tensor = _read_tensor(f, info, start, end)
                    cast = dtype is not None and tensor.is_floating_point()
                    tensors[name] = tensor.to(dtype) if cast else tensor
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BioGPTError(f"{path}: corrupt or truncated safetensors file ({err})") from None
    return tensors


def _read_tensor(f, info: dict, start: int, end: int) -> Tensor:
    """One tensor of a safetensors header entry, read from the open file `f`."""
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ValueError(f"dtype {info['dtype']} is not supported")
    first, last = (start + int(offset) for offset in info["data_offsets"])
    tensor = torch.empty([int(n) for n in info["shape"]], dtype=dtype)
    raw = tensor.view(-1).view(torch.uint8)  # its bytes, to read into
    if last - first != raw.numel() or not start <= first <= last <= end:
        raise ValueError(f"a tensor's bytes ({first}-{last}) do not fit its shape or the file")
    f.seek(first)
    # numpy's stubs give ndarray its buffer protocol (`__buffer__`) on Python >= 3.12 only.
    if f.readinto(memoryview(raw.numpy())) != raw.numel():  # type: ignore[arg-type]
        raise ValueError("the file ends inside a tensor")
    return tensor


class Unimportable:
    """Stands in for a pickled class whose module is not installed.

    fairseq checkpoints pickle fairseq's own objects (meters, configs) next to the weights;
    with `trust_pickle` they load without fairseq, as inert placeholders.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Unimportable:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (Unimportable,), {"__module__": module})


def _lenient_load(file: Any, **kwargs: Any) -> Any:
    return _LenientUnpickler(file, **kwargs).load()


# `torch.load(pickle_module=...)` wants a module: the standard one with a lenient Unpickler.
_lenient_pickle = types.ModuleType("biogpt_lenient_pickle")
_lenient_pickle.__dict__.update(
    {k: v for k, v in vars(pickle).items() if not k.startswith("__")},
    Unpickler=_LenientUnpickler,
    load=_lenient_load,
)


def read_pickle(path: Path, trust_pickle: bool) -> Any:
    """`torch.load` a `.bin`/`.pt` file: safely, or with full unpickling if trusted.

    fairseq pickles its hyper-parameters as `argparse.Namespace`, which is allowlisted, so
    common checkpoints load without trusting them.
    """
    # Zip-format files can be memory-mapped: big checkpoints are then not read twice.
    mmap = zipfile.is_zipfile(path)
    try:
        if not trust_pickle:
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        return torch.load(
            path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=_lenient_pickle
        )
    except pickle.UnpicklingError as err:
        text = str(err)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            raise BioGPTError(
                f"{path}: needs full unpickling (it holds {refused.group(1)}), which can run "
                "code; if you trust the file, pass trust_pickle=True (CLI --trust-pickle)"
            ) from None
        if "Weights only load failed" in text:
            # Safe loading stopped at something else: damage, or pickle features it refuses.
            reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            detail = f" ({reason.group(1).strip()})" if reason else ""
            raise BioGPTError(
                f"{path}: corrupt, or needs full unpickling{detail}; if you trust the file, "
                "pass trust_pickle=True (CLI --trust-pickle)"
            ) from None
        raise BioGPTError(f"{path}: corrupt or truncated file ({one_line(err)})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        raise BioGPTError(f"{path}: corrupt or truncated file ({one_line(err)})") from None


def one_line(err: BaseException) -> str:
    """The exception's type and first sentence: enough to tell causes apart, on one line."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    return f"{type(err).__name__}: {lines[0].split('. ')[0][:200]}"
