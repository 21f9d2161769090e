"""Prompt-lookup speculative decoding (biogpt.decoding.speculative) on the CPU, batch 1:
how many tokens a pass it accepts, how fast it decodes, and that its tokens are greedy's.

Contenders, on the same model and prompts, taking turns:
- `fused`: plain greedy decoding as `generate` does it here (the fused C step, one token a
  step);
- `op`: plain greedy decoding on the op-by-op step (`DecodingBatch(fused_step=False)`),
  the step speculation matches bit for bit;
- `spec k`: speculative greedy decoding over the op-by-op step, drafts of up to k tokens;
- `fused spec k`: the same over the fused step (what `generate --prompt-lookup k` runs
  where the fused step does), a draft verified as rows of one fused step.
`spec k` must give exactly `op`'s tokens and `fused spec k` exactly `fused`'s (checked; the
script fails otherwise); whether `spec k` also gives `fused`'s is counted, not required
(the two steps round differently).

Acceptance needs a model whose greedy answers copy: the bundled `mini` (random weights
cannot show it), on BC5CDR test documents (`/work/shared/data`) in three kinds of prompt:
- `task`: the task's prompt (`encode_prompt`, its learned prompt tokens added to the
  vocabulary, untrained: mini was not fine-tuned on the task);
- `template`: the source, then the first relation of the reference answer written out
  ("the relation between X and Y exists;"), for the model to go on in the template;
- `copy`: the title said twice and begun a third time, to copy: the mechanism's ceiling.
Speed on the 347M shape (random weights, whose greedy output repeats itself, so prompt
drafts would all be accepted): plain decoding on either step, speculation on either step
with drafts from an oracle (that step's plain greedy next tokens, all accepted: the
ceiling) and with drafts that are all wrong (the floor: a pass of k + 1 tokens for one),
and the time of one pass of k + 1 tokens, from which the tokens/s at mini's acceptance on
template prompts is derived.

    python benchmarks/speculative.py [--docs 12] [--tokens 48] [--drafts 2,4,7] [--no-big] [--rounds 3]
        [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch
from machine import cpu_model

from biogpt import BioGPT, tasks
from biogpt.config import ModelConfig
from biogpt.cpu.fused import FusedStep
from biogpt.decoding import generate
from biogpt.decoding.config import GenerationConfig
from biogpt.decoding.speculative import NgramIndex, SpeculativeOutput, prompt_lookup_greedy
from biogpt.decoding.steps import DecodingBatch
from biogpt.tasks.base import encode_prompt
from biogpt.tokenizer.tokenizer import Tokenizer

DATA = Path(os.environ.get("BIOGPT_DATA") or Path(__file__).resolve().parents[2] / "shared/data")
EOS = 2
T = TypeVar("T")


def op_greedy(model: BioGPT, ids: torch.Tensor, new: int) -> list[int]:
    """Plain greedy decoding on the op-by-op step, one token a step."""
    out: list[int] = []
    with DecodingBatch(model, fused_step=False) as batch:
        logits = batch.add(ids, torch.ones_like(ids, dtype=torch.bool), budget=new)
        while True:
            token = logits.argmax(dim=-1)
            out.append(int(token[0]))
            if out[-1] == EOS or len(out) == new:
                return out
            logits = batch.step(token)


def fused_greedy(model: BioGPT, ids: torch.Tensor, new: int) -> list[int]:
    """`generate`'s greedy decoding, on the fused step where it runs."""
    return generate(model, ids, max_new_tokens=new).sequences[0, ids.shape[1] :].tolist()


def speculative(
    model: BioGPT, ids: torch.Tensor, new: int, k: int, fused: bool = False
) -> SpeculativeOutput:
    with DecodingBatch(model, fused_step=fused) as batch:
        assert batch.extends_exactly
        config = GenerationConfig(max_new_tokens=new, prompt_lookup=k)
        return prompt_lookup_greedy(batch, ids, torch.ones_like(ids, dtype=torch.bool), config)


def new_tokens(out: SpeculativeOutput) -> list[int]:
    return out.sequences[0, out.prompt_length :].tolist()


def mini_prompts(docs: int) -> dict[str, list[list[int]]]:
    """The three kinds of prompt (module docstring) for `docs` BC5CDR test documents."""
    tokenizer = Tokenizer.from_pretrained("biogpt")
    task = tasks.get("bc5cdr")
    tokenizer.add_tokens(task.prompt())
    examples = task.load("test", DATA)[:docs]
    kinds: dict[str, list[list[int]]] = {"task": [], "template": [], "copy": []}
    for example in examples:
        kinds["task"].append(encode_prompt(tokenizer, task, example.source))
        source = tokenizer.encode(example.source)[-300:]
        first = example.target.split(";")[0].rstrip(".") + ";"
        kinds["template"].append([EOS, *source, *tokenizer.encode(first)])
        title = tokenizer.encode(example.source.split(". ")[0] + ".")[:40]
        kinds["copy"].append([EOS, *title, *title, *title[:3]])
    return kinds


def take_turns(
    contenders: dict[str, Callable[[], T]], rounds: int
) -> tuple[dict[str, float], dict[str, T]]:
    """Run every contender once a round, `rounds` rounds: each one's best seconds (a slow
    moment of a shared machine hits one round, not the best) and its last result."""
    best = dict.fromkeys(contenders, float("inf"))
    results: dict[str, T] = {}
    for _ in range(rounds):
        for name, run in contenders.items():
            began = time.perf_counter()
            results[name] = run()
            best[name] = min(best[name], time.perf_counter() - began)
    return best, results


def race(model: BioGPT, prompts: list[list[int]], new: int, drafts: list[int], rounds: int) -> dict:
    """Every contender on every prompt, taking turns; totals of best times and tokens."""
    fused_runs = FusedStep.build(model) is not None  # else `fused` is the op-by-op step too
    names = ["fused", "op", *(f"spec {k}" for k in drafts)]
    names += [f"fused spec {k}" for k in drafts] if fused_runs else []
    seconds = dict.fromkeys(names, 0.0)
    tokens = dict.fromkeys(names, 0)
    passes = dict.fromkeys(drafts, 0)
    made = dict.fromkeys(drafts, 0)
    same_as_fused = dict.fromkeys(drafts, 0)
    for prompt in prompts:
        ids = torch.tensor([prompt])
        contenders: dict[str, Callable[[], list[int] | SpeculativeOutput]] = {
            "fused": partial(fused_greedy, model, ids, new),
            "op": partial(op_greedy, model, ids, new),
        }
        for k in drafts:
            contenders[f"spec {k}"] = partial(speculative, model, ids, new, k)
            if fused_runs:
                contenders[f"fused spec {k}"] = partial(speculative, model, ids, new, k, True)
        best, results = take_turns(contenders, rounds)
        fused, plain = results["fused"], results["op"]
        for name in names:
            out = results[name]
            got = new_tokens(out) if isinstance(out, SpeculativeOutput) else out
            step = "fused" if name.startswith("fused") else "op"
            if got != (fused if step == "fused" else plain):
                raise SystemExit(f"{name} gave other tokens than greedy on the {step} step")
            seconds[name] += best[name]
            tokens[name] += len(got)
        for k in drafts:
            out = results[f"spec {k}"]
            assert isinstance(out, SpeculativeOutput)
            passes[k] += out.passes
            made[k] += out.scores.shape[1] - 1  # the first token comes from the prompt's pass
            same_as_fused[k] += new_tokens(out) == fused
    return {
        "tokens/s": {name: round(tokens[name] / seconds[name], 1) for name in names},
        "tokens/pass": {k: round(made[k] / max(passes[k], 1), 2) for k in drafts},
        "identical to their own step's greedy (checked)": True,
        "identical to fused": {k: f"{same_as_fused[k]}/{len(prompts)}" for k in drafts},
    }


def big_shape(
    new: int, drafts: list[int], tokens_per_pass: dict[int, float], dtype: torch.dtype, rounds: int
) -> dict:
    """The 347M shape: plain steps, oracle drafts (ceiling), wrong drafts (floor), and the
    tokens/s at mini's acceptance from the time of a pass of k + 1 tokens."""
    torch.manual_seed(0)
    model = BioGPT(ModelConfig.from_name("biogpt")).eval().to(dtype)
    ids = torch.tensor([[2, 4805, 9, 656, 21] * 4])
    plain = {"op": op_greedy(model, ids, new), "fused": fused_greedy(model, ids, new)}
    prompt_len = ids.shape[1]

    def oracle(step: str, index: NgramIndex, length: int) -> list[int]:
        made = len(index.tokens) - prompt_len
        return plain[step][made : made + length]

    def wrong(step: str, index: NgramIndex, length: int) -> list[int]:
        return [t + 1 for t in oracle(step, index, length)]

    def drafted_by(draft: Callable[..., list[int]], step: str, k: int) -> SpeculativeOutput:
        real_draft = NgramIndex.draft

        def step_draft(index: NgramIndex, length: int) -> list[int]:
            return draft(step, index, length)

        NgramIndex.draft = step_draft  # type: ignore[method-assign]
        try:
            return speculative(model, ids, new, k, fused=step == "fused")
        finally:
            NgramIndex.draft = real_draft  # type: ignore[method-assign]

    contenders: dict[str, Callable[[], list[int] | SpeculativeOutput]] = {
        "fused": partial(fused_greedy, model, ids, new),
        "op": partial(op_greedy, model, ids, new),
    }
    for step in ("op", "fused") if FusedStep.build(model) is not None else ("op",):
        prefix = "" if step == "op" else "fused "
        for k in drafts:
            contenders[f"{prefix}spec {k} wrong"] = partial(drafted_by, wrong, step, k)
            contenders[f"{prefix}spec {k} oracle"] = partial(drafted_by, oracle, step, k)
    best, results = take_turns(contenders, rounds)
    result: dict = {}
    for name, out in results.items():
        got = new_tokens(out) if isinstance(out, SpeculativeOutput) else out
        step = "fused" if name.startswith("fused") else "op"
        if got != plain[step]:
            raise SystemExit(f"{name} gave other tokens than greedy on the {step} step (347M)")
        result[name] = {"tokens/s": round(len(got) / best[name], 2)}
        if isinstance(out, SpeculativeOutput):
            result[name]["tokens/pass"] = round(out.tokens_per_pass, 2)
    for prefix in ("", "fused ") if FusedStep.build(model) is not None else ("",):
        for k in drafts:
            ceiling = results[f"{prefix}spec {k} oracle"]
            assert isinstance(ceiling, SpeculativeOutput)
            pass_seconds = best[f"{prefix}spec {k} oracle"] / (ceiling.passes + 1)  # + prompt's
            result[f"{prefix}spec {k} at mini's template acceptance"] = {
                "tokens/pass": tokens_per_pass[k],
                "tokens/s": round(tokens_per_pass[k] / pass_seconds, 2),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=12, help="BC5CDR test documents")
    parser.add_argument("--tokens", type=int, default=48, help="new tokens at most (mini)")
    parser.add_argument("--big-tokens", type=int, default=24, help="new tokens (347M shape)")
    parser.add_argument("--drafts", default="2,4,7", help="draft lengths to try")
    parser.add_argument("--no-big", action="store_true", help="skip the 347M shape")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each; the best counts")
    args = parser.parse_args()
    drafts = [int(k) for k in args.drafts.split(",")]
    dtype = getattr(torch, args.dtype)
    print(
        f"CPU: {cpu_model()}; threads: {torch.get_num_threads()}; {args.dtype}; "
        f"load: {os.getloadavg()}"
    )
    model = BioGPT.from_pretrained("mini").to(dtype)
    kinds = mini_prompts(args.docs)
    model.resize_vocab(max(max(p) for p in kinds["task"]) + 1)  # the task's prompt tokens
    report: dict = {}
    for kind, prompts in kinds.items():
        report[f"mini, {kind} prompts"] = race(model, prompts, args.tokens, drafts, args.rounds)
        print(kind, json.dumps(report[f"mini, {kind} prompts"]), flush=True)
    if not args.no_big:
        template = report["mini, template prompts"]["tokens/pass"]
        report["347M shape"] = big_shape(args.big_tokens, drafts, template, dtype, args.rounds)
        print("347M", json.dumps(report["347M shape"]), flush=True)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
