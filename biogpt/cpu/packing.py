"""Preparing a model for fast CPU inference, and releasing it again.

`prepare(model, rows)` swaps the model's layers, in place, for the engine's
(`biogpt.cpu.layers`): every attention's q, k and v become one fused layer, and every
linear layer one on the fastest kernel at hand for `rows` input rows:
- up to 8 rows of fp32 or bf16 where the compiled kernel is built: `GemvLinear`, which
  reads the weights where they are (nothing is copied but the fused q/k/v, and the tied
  output projection multiplies by the token embedding itself);
- otherwise a bf16 or fp16 model gets `HalfLinear` (fbgemm's fp16 weights; kept once made,
  for every row count, since making it takes seconds) and an fp32 one `PackedLinear`
  (oneDNN's layout for that row count, reordered when the count changes).
`quantize_int8(model)` swaps them for `Int8Linear` instead: lossy, for good (the weights
are rounded; releasing gives fp32 layers holding the dequantised weights).

Lifetime. A prepared model stays prepared until `release(model)` gives it back its plain
`nn.Linear` layers and attention. `generate` prepares the model it is handed (that is the
decoding engine's choice, `biogpt.decoding.steps`) and leaves it so for the next call.
While prepared, the model is for inference on this CPU only: the engine's layers hold
weights in layouts that `.to()`, `.half()`, `.train()` and `load_state_dict` know nothing
of, so the model refuses them with one line naming `release` (a `.to()` that changes
nothing is let through). The refusal guards calls on the whole model; the engine's layers
also refuse `.train()` themselves, but casting a submodule (`model.biogpt.half()`) is not
caught. Its state dict is the plain model's, key for key.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from biogpt.cpu import gemv
from biogpt.cpu.layers import (
    HALF_DTYPES,
    PACKABLE_DTYPES,
    FusedQKV,
    GemvLinear,
    GemvQKV,
    HalfLinear,
    HalfQKV,
    InferenceAttention,
    InferenceLinear,
    Int8Linear,
    Int8QKV,
    PackedLinear,
    PackedQKV,
    Scratch,
    fused_qkv_weights,
    has_fbgemm,
)
from biogpt.errors import BioGPTError
from biogpt.model import Attention, DecoderModel

GUARD = "cpu_engine"  # the name of the guard module a prepared model carries


class PreparedForCPU(nn.Module):
    """The first child of a prepared model: says how it is prepared (in `print(model)`),
    and refuses what would silently break the engine's layers. PyTorch visits a model's
    children in order for `.to()`, `.train()` and `load_state_dict`, so as the first child
    it refuses before any other module has been touched."""

    def __init__(self, layout: str, dtype: torch.dtype, owner: nn.Module) -> None:
        super().__init__()
        self.layout, self.dtype = layout, dtype
        self.__dict__["owner"] = weakref.ref(owner)  # not a child: the model it guards

    def extra_repr(self) -> str:
        return self.layout

    def _refuse(self, what: str) -> BioGPTError:
        return BioGPTError(
            f"this model is prepared for CPU inference ({self.layout}); {what} needs its "
            "plain layers: call biogpt.cpu.release(model) first"
        )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> PreparedForCPU:
        probe = torch.zeros(1, dtype=self.dtype)
        if fn(probe) is not probe:  # `.to()` of where and what the model already is passes
            raise self._refuse("moving or casting it")
        return self

    def train(self, mode: bool = True) -> PreparedForCPU:
        if mode:
            owner = self.__dict__["owner"]()
            if owner is not None:
                owner.training = False  # `Module.train` set it before visiting its children
            raise self._refuse("training")
        return super().train(False)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        raise self._refuse("loading weights")


_F = TypeVar("_F", bound=Callable[..., Any])


def _ordinary_tensors(fn: _F) -> _F:
    """Run `fn` with autograd off but outside inference mode, even when called inside it
    (`generate` prepares the model under `torch.inference_mode`): the tensors it makes must
    be able to become trainable parameters again later, which inference tensors cannot."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False), torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --- What a model can take ----------------------------------------------------------------


def can_prepare(model: nn.Module) -> bool:
    """Whether `prepare` would help: an eval-mode model on the CPU in fp32 or bf16, or in
    fp16 where fbgemm runs."""
    weight = next(model.parameters(), None)
    if weight is None or weight.device.type != "cpu" or model.training:
        return False
    if weight.dtype in HALF_DTYPES and has_fbgemm():
        return True
    return (
        weight.dtype in PACKABLE_DTYPES
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def _layout(model: nn.Module, rows: int) -> type[InferenceLinear]:
    """The layer type `prepare` gives `model` for `rows` input rows."""
    dtype = next(model.parameters()).dtype
    kernel = rows <= gemv.MAX_ROWS and gemv.available() and dtype in gemv.KERNEL_DTYPES
    takes_half = dtype in HALF_DTYPES and has_fbgemm()
    if takes_half and (not kernel or _has_layer(model, HalfLinear)):
        return HalfLinear  # for every row count once there: remaking it costs seconds
    return GemvLinear if kernel else PackedLinear


def _has_layer(model: nn.Module, kind: type) -> bool:
    return any(isinstance(m, kind) for m in model.modules())


def is_prepared(model: nn.Module) -> bool:
    """Whether `model` holds the engine's layers (prepared or quantised)."""
    return isinstance(getattr(model, GUARD, None), PreparedForCPU)


def is_quantized(model: nn.Module) -> bool:
    return _has_layer(model, Int8Linear)


# --- Preparing and releasing ----------------------------------------------------------------


@_ordinary_tensors
def prepare(model: nn.Module, rows: int = 1) -> bool:
    """Give `model` (in place) the engine's layers for `rows` input rows a call; returns
    whether it is prepared. A quantised model keeps its int8 layers (they serve any count);
    a model that cannot be prepared (see `can_prepare`) is left as it is."""
    if is_quantized(model):
        return True
    if not (is_prepared(model) or can_prepare(model)):
        return False
    kind = _layout(model, rows)
    if _has_layer(model, kind):
        if kind is PackedLinear:
            for module in model.modules():
                if isinstance(module, PackedLinear):
                    module.repack(rows)
        return True  # GemvLinear and HalfLinear serve every count they are chosen for
    release(model)  # plain layers to start from (a no-op unless prepared another way)
    head = getattr(model, "output_projection", None)
    logits = torch.float32  # the head's output dtype: fp32 logits whatever the weights
    if kind is GemvLinear:
        _swap_layers(
            model,
            lambda w, b, _: GemvQKV(w.clone(), b),  # `w` lies in the scratch buffer
            lambda linear, _: GemvLinear.from_linear(linear, logits if linear is head else None),
        )
    elif kind is HalfLinear:
        _swap_layers(
            model,
            lambda w, b, scratch: HalfQKV(w, b, scratch=scratch),
            lambda linear, scratch: HalfLinear.from_linear(
                linear, logits if linear is head else None, scratch
            ),
        )
    else:
        _swap_layers(
            model,
            lambda w, b, _: PackedQKV(w, b, rows),
            lambda linear, _: PackedLinear.from_linear(linear, rows),
        )
    return True


@_ordinary_tensors
def quantize_int8(model: nn.Module) -> None:
    """Give `model` (in place, on the CPU) int8 linear layers, one scale per output row,
    everything else in fp32; each attention's q, k and v fused. Lossy: see `Int8Linear`."""
    weight = next(model.parameters())
    if weight.device.type != "cpu":
        raise BioGPTError("int8 weights run on the CPU only")
    release(model)
    if weight.dtype != torch.float32:
        model.float()
    _swap_layers(model, lambda w, b, _: Int8QKV(w, b),
                 lambda linear, _: Int8Linear.from_linear(linear))  # fmt: skip


@_ordinary_tensors
def release(model: nn.Module) -> None:
    """Give `model` back its plain `nn.Linear` layers and attention (in place), and tie its
    head again where it was tied; a no-op on a model that is not prepared. After int8, the
    layers hold the dequantised weights."""
    if not is_prepared(model):
        return
    delattr(model, GUARD)
    for parent, name in _children_of_type(model, InferenceLinear):
        if not isinstance(getattr(parent, name), FusedQKV):
            setattr(parent, name, getattr(parent, name).to_linear())
    for parent, name in _children_of_type(model, InferenceAttention):
        inference = getattr(parent, name)
        plain = inference.plain
        for part, linear in inference.qkv_proj.split().items():
            setattr(plain, part, linear)
        plain.out_proj = inference.out_proj
        setattr(parent, name, plain)
    if isinstance(model, DecoderModel):
        model.tie_weights()


def _children_of_type(model: nn.Module, kind: type) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute name) of every descendant of type `kind`.

    Only names are collected, not the layers, so that a replaced layer's weight is freed
    as soon as it is swapped out and memory never holds two copies of the model.
    """
    return [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, kind)
    ]


MakeQKV = Callable[[Tensor, Tensor, Scratch], InferenceLinear]
MakeLinear = Callable[[nn.Linear, Scratch], InferenceLinear]


def _swap_layers(model: nn.Module, make_qkv: MakeQKV, make_linear: MakeLinear) -> None:
    """Swap each attention for an `InferenceAttention` whose q/k/v are `make_qkv(weight,
    bias, scratch)`, and every other nn.Linear for `make_linear(layer, scratch)`, one layer
    at a time so that memory never holds two models, all building in one `Scratch`; then
    put the guard in front of the model's children.

    (One layer at a time on one thread: fbgemm's packing would run side by side on
    several threads, faster, but each thread's fp32 copy of a layer would raise the peak
    memory of bf16 decoding; `benchmarks/load_memory.py` measures it.)"""
    scratch = Scratch()
    for parent, name in _children_of_type(model, Attention):
        plain = getattr(parent, name)
        qkv = make_qkv(*fused_qkv_weights(plain, scratch), scratch)
        out_proj = plain.out_proj
        for part in (*FusedQKV.names, "out_proj"):
            delattr(plain, part)
        setattr(parent, name, InferenceAttention(plain, qkv, out_proj))
        _release_freed_memory()
    for parent, name in _children_of_type(model, nn.Linear):
        setattr(parent, name, make_linear(getattr(parent, name), scratch))
        _release_freed_memory()
    layout = next(m.kind for m in model.modules() if isinstance(m, InferenceLinear))
    guard = PreparedForCPU(layout, next(model.parameters()).dtype, model)
    # First among the children (see PreparedForCPU); a dict keeps insertion order.
    model.__dict__["_modules"] = {GUARD: guard, **model._modules}


def _release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system, where the C library can (glibc).

    Swapping a layer frees its old weight and the temporaries that built the new one, but
    the new long-lived weights land between those holes, which the allocator then keeps
    (`benchmarks/load_memory.py` measures what a prepared model holds).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to call
        return None


_MALLOC_TRIM = _find_malloc_trim()
