"""The training loss: the fused output layer + cross-entropy equals the unfused pair."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biogpt import BioGPT, ModelConfig
from biogpt.training.batching import collate
from biogpt.training.loss import HeadLoss, TokenLoss, batch_loss, head_loss, token_loss_sum


def problem(rows: int = 37, hidden: int = 16, vocab: int = 101, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=g, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.5).requires_grad_()
    t = torch.randint(0, vocab, (rows,), generator=g)
    return x, w, t


def reference(x, w, t, scale: float = 1.0):
    """Loss and gradients of the plain `F.cross_entropy(x @ w.T, t, reduction="sum")`."""
    x, w = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    loss = F.cross_entropy(x @ w.t(), t, reduction="sum")
    (loss * scale).backward()
    return loss.float(), x.grad.float(), w.grad.float()


@pytest.mark.parametrize("chunk_rows", [1, 5, 16, 37, 1024])
def test_loss_and_gradients_equal_the_unfused_computation(chunk_rows):
    x, w, t = problem()
    loss = HeadLoss(chunk_rows)(x, w, t)
    (loss * 0.25).backward()  # a scaled loss, as the training loop backpropagates
    want_loss, want_x, want_w = reference(x, w, t, scale=0.25)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad, want_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, want_w, rtol=1e-5, atol=1e-6)


def test_hand_computed_case():
    # Two classes, logits (0, ln 3): p = (1/4, 3/4). Target 0: loss ln 4, dL/dlogits (-3/4, 3/4).
    x = torch.tensor([[1.0]], requires_grad=True)
    w = torch.tensor([[0.0], [torch.log(torch.tensor(3.0))]], requires_grad=True)
    loss = head_loss(x, w, torch.tensor([0]))
    loss.backward()
    ln3 = float(torch.log(torch.tensor(3.0)))
    assert float(loss.detach()) == pytest.approx(float(torch.log(torch.tensor(4.0))), rel=1e-6)
    assert float(x.grad) == pytest.approx(0.75 * ln3, rel=1e-6)  # sum_v g_v * w_v
    torch.testing.assert_close(w.grad, torch.tensor([[-0.75], [0.75]]))


def test_extreme_logits_stay_finite():
    x = torch.tensor([[100.0], [-100.0]], requires_grad=True)
    w = torch.tensor([[50.0], [-50.0], [0.0]], requires_grad=True)
    t = torch.tensor([1, 0])
    loss = head_loss(x, w, t)
    loss.backward()
    want_loss, want_x, want_w = reference(x, w, t)
    torch.testing.assert_close(loss, want_loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
    torch.testing.assert_close(x.grad, want_x)
    torch.testing.assert_close(w.grad, want_w)


def test_only_the_inputs_that_need_gradients_get_them():
    x, w, t = problem()
    frozen_w = w.detach()
    loss = HeadLoss(8)(x, frozen_w, t)
    loss.backward()
    _, want_x, _ = reference(x, w, t)
    torch.testing.assert_close(x.grad, want_x, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        no_grad = HeadLoss(8)(x, w, t)
    assert not no_grad.requires_grad
    torch.testing.assert_close(no_grad, loss.detach())


def test_backward_twice_with_retained_graph_gives_the_same_gradients():
    x, w, t = problem()
    loss = HeadLoss(8)(x, w, t)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    loss.backward()
    torch.testing.assert_close(x.grad, first)


def test_buffers_are_reused_between_calls():
    x, w, t = problem()
    fused = HeadLoss(16)
    fused(x, w, t).backward()
    buffer = fused.buffer(16, w.shape[0], torch.float32, x.device)
    fused(x, w, t).backward()
    assert fused.buffer(16, w.shape[0], torch.float32, x.device).data_ptr() == buffer.data_ptr()


def test_bf16_autocast_is_close_to_the_unfused_autocast_loss():
    x, w, t = problem(rows=64, hidden=32, vocab=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = HeadLoss(16)(x, w, t)
    fused.backward()
    got_x, got_w = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = x @ w.t()
    plain = F.cross_entropy(logits.float(), t, reduction="sum")
    plain.backward()
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=1e-3, atol=0.0)
    torch.testing.assert_close(got_x, x.grad, rtol=0.02, atol=0.02)
    torch.testing.assert_close(got_w, w.grad, rtol=0.02, atol=0.02)


def test_training_loss_through_token_loss_equals_full_logits_loss_and_gradients():
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny", dropout=0.0, attention_dropout=0.0)
    model = BioGPT(config).train()
    batch = collate([([2, 7, 8, 9, 10], [0, 0, 1, 1, 1]), ([2, 30, 31], None)], True)
    ours = batch_loss(TokenLoss(model), batch.input_ids, batch.labels)
    ours.backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    full = token_loss_sum(model(batch.input_ids, batch.attention_mask).logits, batch.labels)
    full.backward()
    torch.testing.assert_close(ours, full)
    for got, param in zip(fused_grads, model.parameters(), strict=True):
        torch.testing.assert_close(got, param.grad, rtol=1e-4, atol=1e-6)


def test_chunk_rows_must_be_positive():
    with pytest.raises(ValueError, match="chunk_rows"):
        HeadLoss(0)
