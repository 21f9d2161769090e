"""The contender every benchmark measures against: transformers' BioGptForCausalLM."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from biogpt import BioGPT


def hf_twin(model: BioGPT) -> torch.nn.Module:
    """transformers' `BioGptForCausalLM` with `model`'s config and weights, on its device
    (in eval mode; call `.train()` to time training)."""
    import transformers

    skip = ("model_type", "architectures")
    config = {k: v for k, v in model.config.to_hf_dict().items() if k not in skip}
    hf = transformers.BioGptForCausalLM(transformers.BioGptConfig(**config))
    hf.load_state_dict(model.state_dict(), strict=False)
    return hf.to(model.device).eval()


def adamw(model: torch.nn.Module, lr: float, **options) -> torch.optim.Optimizer:
    """Adam as BioGPT trains with it: betas (0.9, 0.98), eps 1e-8, decoupled decay 0.01."""
    return torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01, **options
    )


def race_training_steps(
    ours: torch.nn.Module,
    lm: BioGPT,
    batch,
    hf_inputs: dict[str, torch.Tensor],
    dtypes: Sequence[str],
    steps: int,
    tokens: int,
    lr: float,
    device: str = "cpu",
) -> None:
    """Time one training step (forward, loss, backward, AdamW) of ours and of transformers'
    model on the same weights and batch, alternating steps and keeping each one's best; print
    tokens/s and ratios. A third contender is transformers' model with our optimiser settings,
    to tell the model apart from the optimiser.

    `ours` is what `biogpt.training.loop.accumulate_gradients` takes (the LM or its loss wrapper),
    `lm` the BioGPT inside it, `hf_inputs` the keyword arguments transformers' model gets.
    """
    from biogpt.training.loop import accumulate_gradients

    theirs, theirs_same_optimiser = hf_twin(lm).train(), hf_twin(lm).train()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for dtype in dtypes:
        autocast = (
            (lambda: torch.autocast(device, dtype=torch.bfloat16))
            if dtype == "bf16"
            else nullcontext
        )
        opt_ours = adamw(ours, lr, foreach=True)
        opt_theirs = adamw(theirs, lr)  # the defaults: a per-parameter loop on CPU
        opt_same = adamw(theirs_same_optimiser, lr, foreach=True)

        def ours_step(opt=opt_ours, dtype=dtype) -> float:
            loss, _ = accumulate_gradients(ours, [batch], dtype)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        def hf_step(model=theirs, opt=opt_theirs, autocast=autocast) -> float:
            with autocast():
                loss = model(**hf_inputs).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        contenders: dict[str, Callable[[], float]] = {
            "ours": ours_step,
            "transformers": hf_step,
            "transformers + our AdamW": lambda o=opt_same: hf_step(theirs_same_optimiser, o),
        }
        best = dict.fromkeys(contenders, float("inf"))
        losses = {name: fn() for name, fn in contenders.items()}  # warm-up, and a sanity check
        for _ in range(steps):
            for name, fn in contenders.items():
                sync()
                began = time.perf_counter()
                fn()
                sync()
                best[name] = min(best[name], time.perf_counter() - began)
        print(f"\n{dtype}: first-step loss ours {losses['ours']:.4f}, "
              f"transformers {losses['transformers']:.4f}")  # fmt: skip
        for name, seconds in best.items():
            ratio = best["transformers"] / seconds
            print(f"  {name:26s} {tokens / seconds:9.0f} tokens/s  ({ratio:.2f}x transformers)")
