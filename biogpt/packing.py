"""CPU inference with linear weights prepacked for oneDNN.

Decoding one token multiplies a single row by every weight matrix, so its speed is the
speed at which weights stream from memory. PyTorch's default CPU matmul reaches about half
of this machine's memory bandwidth for that shape (and much less for the 5 rows of beam
search); the same weights reordered once into oneDNN's blocked layout reach about 85%.

`pack(model)` swaps every `nn.Linear` for a `PackedLinear` that holds only the reordered
weight, so memory does not grow (the tied output projection gets its own packed copy of the
embedding matrix). The swap is invisible to the rest of the code: state dicts still hold
plain `weight`/`bias` tensors, and `unpack(model)` restores ordinary layers, which the model
does by itself before training, moving or casting (see `_Base.train` and `_Base._apply`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# dtypes oneDNN runs fast on CPUs with AVX-512 (bf16 through AVX512-BF16 or AMX).
PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def can_pack(model: nn.Module) -> bool:
    """Whether `pack` would help: an eval-mode model on the CPU in fp32 or bf16."""
    weight = next(model.parameters(), None)
    return (
        weight is not None
        and weight.device.type == "cpu"
        and weight.dtype in PACKABLE_DTYPES
        and not model.training
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class PackedLinear(nn.Module):
    """`y = x W^T + b` with W in oneDNN's layout. Inference only: it has no gradient."""

    def __init__(self, weight: Tensor, bias: Tensor | None, rows: int = 1) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.rows = rows
        # The layout oneDNN picks depends on the number of rows it is told to expect:
        # fp32 weights packed for 1 row run 5 rows at half the speed, and the reverse.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
        self.bias = None if bias is None else bias.detach().clone()

    @classmethod
    def from_linear(cls, linear: nn.Linear, rows: int = 1) -> PackedLinear:
        return cls(linear.weight, linear.bias, rows)

    def repack(self, rows: int) -> None:
        """Reorder the weight for `rows` input rows (decoding batch size x beams)."""
        if rows != self.rows:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.dense_weight(), rows)
            self.rows = rows

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def dense_weight(self) -> Tensor:
        return self.packed.to_dense()

    def to_linear(self) -> nn.Linear:
        weight = self.dense_weight()
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device="meta",
            dtype=weight.dtype,
        )
        linear.weight = nn.Parameter(weight)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias)
        return linear

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        # The same keys and values as the nn.Linear it replaced.
        destination[prefix + "weight"] = self.dense_weight()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


class PackedQKV(PackedLinear):
    """The q, k and v projections of one attention layer packed as one [3H, H] matrix.

    It stands in `qkv_proj` while `q_proj`, `k_proj` and `v_proj` are removed; its state
    dict entries are still the three projections' own.
    """

    names = ("k_proj", "v_proj", "q_proj")  # the order Hugging Face lists them in

    @classmethod
    def fuse(
        cls, q: nn.Linear, k: nn.Linear, v: nn.Linear, rows: int, scratch: Tensor
    ) -> PackedQKV:
        """Pack q, k, v through `scratch`, a reusable [3H, H] buffer: a fresh buffer per layer
        would leave the allocator with freed holes that keep the process's memory high."""
        torch.cat([q.weight.detach(), k.weight.detach(), v.weight.detach()], out=scratch)
        return cls(scratch, torch.cat([q.bias, k.bias, v.bias]), rows)

    def split(self) -> dict[str, nn.Linear]:
        """The three projections as plain layers again."""
        h = self.out_features // 3
        weights = self.dense_weight().split(h)
        biases = self.bias.split(h)
        layers = {}
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weights, biases, strict=True):
            layer = nn.Linear(h, h, device="meta", dtype=w.dtype)
            layer.weight, layer.bias = nn.Parameter(w.clone()), nn.Parameter(b.clone())
            layers[name] = layer
        return layers

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        base = prefix[: -len("qkv_proj.")]
        layers = self.split()
        for name in self.names:
            destination[base + name + ".weight"] = layers[name].weight.detach()
            destination[base + name + ".bias"] = layers[name].bias.detach()


def _attention_layers(model: nn.Module) -> list[nn.Module]:
    """Modules that hold separate q/k/v projections and a `qkv_proj` slot for fusing them."""
    return [
        m
        for m in model.modules()
        if hasattr(m, "qkv_proj")
        and all(isinstance(getattr(m, n, None), nn.Linear) for n in PackedQKV.names)
    ]


def _linear_slots(model: nn.Module, kind: type) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute name) of every child layer of type `kind`.

    Only names are collected, not the layers, so that a replaced layer's weight is freed
    as soon as it is swapped out and memory never holds two copies of the model.
    """
    return [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, kind)
    ]


def pack(model: nn.Module, rows: int = 1) -> None:
    """Replace every nn.Linear of `model` by a PackedLinear for `rows` rows (in place), fusing
    each attention layer's q, k and v; layers already packed are reordered for `rows` if they
    were packed for another count."""
    scratch: Tensor | None = None
    for attention in _attention_layers(model):
        q = attention.q_proj.weight
        if scratch is None or scratch.shape[1] != q.shape[1] or scratch.dtype != q.dtype:
            scratch = q.new_empty(3 * q.shape[0], q.shape[1])
        attention.qkv_proj = PackedQKV.fuse(
            attention.q_proj, attention.k_proj, attention.v_proj, rows, scratch
        )
        for name in PackedQKV.names:
            delattr(attention, name)
    for parent, name in _linear_slots(model, nn.Linear):
        setattr(parent, name, PackedLinear.from_linear(getattr(parent, name), rows))
    for module in model.modules():
        if isinstance(module, PackedLinear):
            module.repack(rows)


def unpack(model: nn.Module) -> None:
    """Restore plain nn.Linear layers (in place); ties the head again where it was tied."""
    slots = _linear_slots(model, PackedLinear)
    for parent, name in slots:
        layer = getattr(parent, name)
        if isinstance(layer, PackedQKV):
            for part, linear in layer.split().items():
                setattr(parent, part, linear)
            setattr(parent, name, None)
        else:
            setattr(parent, name, layer.to_linear())
    if slots and hasattr(model, "tie_weights"):
        model.tie_weights()


def is_packed(model: nn.Module) -> bool:
    return any(isinstance(m, PackedLinear) for m in model.modules())
