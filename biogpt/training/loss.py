"""What training minimises: the summed next-token cross-entropy, with a fused output layer.

`TokenLoss` wraps a causal LM so that its forward is the loss of a micro-batch: the
decoder runs on every position, the output layer only on the positions that are trained.

The output layer and its cross-entropy run in one pass, chunked over rows (`HeadLoss`).
With a 42k vocabulary the output layer is most of a small model's training step, and the
usual `F.cross_entropy(hidden @ weight.T, targets)` spends much of that step moving
(N, V) tensors: the logits, their log-softmax, the zero-filled gradient of the loss and the
gradient of the logits, each a fresh allocation of N x V floats (0.35 GB for 2,048 tokens),
page-faulted in anew every step. `HeadLoss` computes the same loss and the same gradients
with one reusable (rows, V) buffer: per chunk of rows it computes the logits, turns them in
place into the gradient of the loss (softmax minus one-hot), and multiplies that into the
gradients of the hidden states and of the weight straight away. The backward pass then only
scales the two stored gradients by the incoming gradient of the loss.

Mathematically this is cross-entropy summed over rows; the results equal the unfused
computation up to floating-point summation order. Under bf16 autocast the matrix
multiplications run in bf16 and the softmax in fp32, as autocast would run them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biogpt.labels import IGNORE_INDEX, next_token_targets

__all__ = ["HeadLoss", "TokenLoss", "batch_loss", "head_loss", "lm_loss_sum", "token_loss_sum"]

DEFAULT_CHUNK_ROWS = 1024  # fewer rows lose matmul speed; more only cost memory


class HeadLoss:
    """Summed cross-entropy of `hidden @ weight.T` against `targets`, with reusable buffers.

    One instance keeps its (chunk_rows, V) work buffers between calls, so a training loop
    allocates them once; keep one per model (`TokenLoss` does).
    """

    def __init__(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        self.chunk_rows = chunk_rows
        self._buffers: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def buffer(self, rows: int, columns: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A (rows, columns) view of this instance's work buffer of that dtype and device."""
        key = (dtype, device)
        flat = self._buffers.get(key)
        if flat is None or flat.numel() < rows * columns:
            self._buffers.pop(key, None)  # free the old one before allocating the new
            flat = self._buffers[key] = torch.empty(rows * columns, dtype=dtype, device=device)
        return flat[: rows * columns].view(rows, columns)

    def __call__(self, hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
        """hidden (N, H), weight (V, H) (the output layer's, no bias), targets (N,) in [0, V):
        the summed loss, a 0-d fp32 tensor that backpropagates into hidden and weight."""
        dtype = hidden.dtype
        if torch.is_autocast_enabled(hidden.device.type):
            dtype = torch.get_autocast_dtype(hidden.device.type)
        if not torch.is_grad_enabled():
            with torch.autocast(hidden.device.type, enabled=False):
                return _loss_and_gradients(hidden, weight, targets, dtype, self, False, False)[0]
        return _FusedHeadLoss.apply(hidden, weight, targets, dtype, self)


def head_loss(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """`HeadLoss()(hidden, weight, targets)` with buffers used once (see `HeadLoss`)."""
    return HeadLoss()(hidden, weight, targets)


class _FusedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        dtype: torch.dtype,
        owner: HeadLoss,
    ) -> Tensor:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):
            loss, grad_hidden, grad_weight = _loss_and_gradients(
                hidden, weight, targets, dtype, owner, need_hidden, need_weight
            )
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors  # not scaled in place: backward may repeat
        return (
            grad_hidden * grad_loss.to(grad_hidden.dtype) if grad_hidden.numel() else None,
            grad_weight * grad_loss.to(grad_weight.dtype) if grad_weight.numel() else None,
            None,
            None,
            None,
        )


def _loss_and_gradients(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    dtype: torch.dtype,
    owner: HeadLoss,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The summed loss and, where asked (else empty tensors), d loss / d hidden and
    d loss / d weight, computed chunk by chunk of rows in `owner`'s buffers."""
    rows, vocab = hidden.shape[0], weight.shape[0]
    device = hidden.device
    hidden_c, weight_c = hidden.to(dtype), weight.to(dtype)  # compute dtype; no copies in fp32
    low_precision = dtype != torch.float32
    chunk = min(owner.chunk_rows, max(rows, 1))
    logits_buffer = owner.buffer(chunk, vocab, dtype, device)
    # The softmax always runs in fp32; in fp32 it runs in the logits' own buffer.
    float_buffer = owner.buffer(chunk, vocab, torch.float32, device) if low_precision else None
    empty = hidden.new_empty(0)
    grad_hidden = torch.empty_like(hidden) if need_hidden else empty
    # Accumulated over chunks in fp32, whatever the compute dtype.
    grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else empty
    loss = torch.zeros((), dtype=torch.float32, device=device)
    for start in range(0, rows, chunk):
        end = min(start + chunk, rows)
        count, chunk_hidden, chunk_targets = end - start, hidden_c[start:end], targets[start:end]
        logits = logits_buffer[:count]  # (count, V)
        torch.mm(chunk_hidden, weight_c.t(), out=logits)
        # fp32 scores (count, V), turned in place into exp, softmax, then the logits' gradient
        probs = logits if float_buffer is None else float_buffer[:count].copy_(logits)
        picked = probs.gather(1, chunk_targets.unsqueeze(1)).squeeze(1)  # the targets' logits
        peak = probs.amax(dim=1, keepdim=True)
        probs.sub_(peak).exp_()  # exp(logits - max)
        total = probs.sum(dim=1, keepdim=True)
        log_normaliser = peak.squeeze(1) + total.log().squeeze(1)
        loss += (log_normaliser - picked).sum()
        if not (need_hidden or need_weight):
            continue
        probs.div_(total)  # the softmax
        positions = torch.arange(count, device=device) * vocab + chunk_targets
        minus_one = torch.full((count,), -1.0, device=device)
        probs.view(-1).index_add_(0, positions, minus_one)  # softmax minus one-hot
        grad_logits = logits.copy_(probs) if low_precision else probs  # compute dtype
        if need_hidden and low_precision:
            grad_hidden[start:end] = torch.mm(grad_logits, weight_c)
        elif need_hidden:
            torch.mm(grad_logits, weight_c, out=grad_hidden[start:end])
        if need_weight:
            if low_precision:
                grad_weight += torch.mm(grad_logits.t(), chunk_hidden)
            else:
                grad_weight.addmm_(grad_logits.t(), chunk_hidden)
    if need_weight and grad_weight.dtype != weight.dtype:
        grad_weight = grad_weight.to(weight.dtype)
    return loss, grad_hidden, grad_weight


# --- The loss of a causal LM ---------------------------------------------------------------


def token_loss_sum(logits: Tensor, labels: Tensor) -> Tensor:
    """Summed next-token cross-entropy: logits (B, T, V) at t predict labels (B, T) at t+1.

    Half-precision logits are upcast: the log-softmax over a 42k vocabulary needs fp32.
    """
    targets = next_token_targets(labels)  # (B, T); the last position predicts nothing
    if logits.dtype != torch.float32:
        logits = logits.float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
    )


def lm_loss_sum(
    model: nn.Module, input_ids: Tensor, labels: Tensor, loss_fn: HeadLoss | None = None
) -> Tensor:
    """Summed loss of one micro-batch (under whatever autocast the caller set).

    For our causal LM the vocabulary projection, most of a step's work at a 42k vocabulary,
    runs only on the positions that are trained: padding, each row's last position and,
    with loss="target", the source are skipped. Same loss, fewer FLOPs. The projection and
    its cross-entropy run fused (`HeadLoss`) in `loss_fn`'s reusable buffers. Other
    models go through their `.logits`.
    """
    decoder = getattr(model, "biogpt", None)
    head = getattr(model, "output_projection", None)
    if decoder is None or not isinstance(head, nn.Linear) or head.bias is not None:
        return token_loss_sum(model(input_ids).logits, labels)
    targets = next_token_targets(labels)  # (B, T)
    trained = targets != IGNORE_INDEX
    hidden, _ = decoder(input_ids)  # (B, T, H)
    return (loss_fn or HeadLoss())(hidden[trained], head.weight, targets[trained])


class TokenLoss(nn.Module):
    """A causal LM whose forward *is* the training loss: (input_ids, labels) -> summed loss.

    DDP and FSDP synchronise gradients only for work done inside their wrapper's forward, and
    our loss calls the decoder and the head separately (to project trained positions only).
    Wrapping this module instead of the bare LM keeps that saving under DDP/FSDP. It also
    owns the fused head loss's work buffers, reused from step to step; `train` wraps a bare
    LM in one.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self.loss_fn = HeadLoss()

    def forward(self, input_ids: Tensor, labels: Tensor) -> Tensor:
        return lm_loss_sum(self.lm, input_ids, labels, self.loss_fn)


def batch_loss(model: nn.Module, input_ids: Tensor, labels: Tensor) -> Tensor:
    """Summed loss of one micro-batch of `model`: a bare LM, or a (wrapped) `TokenLoss`."""
    inner = getattr(model, "module", model)
    if isinstance(inner, TokenLoss):
        return model(input_ids, labels)  # through the wrapper, so its hooks run
    return lm_loss_sum(model, input_ids, labels)
