"""What bf16 and int8 cost in accuracy, on a trained model and real text.

`benchmarks/generate.py` checks agreement on random weights, which says little. This uses
the built-in `mini` model (trained on PubMed abstracts) and the held-out test abstracts of
`shared/data/pretrain/abstracts.jsonl`: teacher-forced over each abstract, the share of
positions where bf16 and int8 pick fp32's next token, and each mode's perplexity, with
the models prepared as `generate` prepares them. With `--stepwise` the abstracts are fed
one token at a time through the KV cache, as decoding feeds them (one row a step: the gemv
kernel's path), instead of in one forward pass (the path of prompts and scoring).

    python benchmarks/precision.py [--docs 50] [--model mini] [--threads 2] [--stepwise]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from biogpt import BioGPT, Tokenizer, cpu
from biogpt.decoding.steps import prefill, row_stepper

ABSTRACTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrain" / "abstracts.jsonl"
MODES = ("fp32", "bf16", "int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50, help="test abstracts to read")
    parser.add_argument("--model", default="mini")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=512, help="tokens per abstract")
    parser.add_argument("--stepwise", action="store_true", help="one token a step, cached")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = Tokenizer.from_pretrained("biogpt")
    with open(ABSTRACTS, encoding="utf-8") as f:
        docs = [d for d in map(json.loads, f) if d["split"] == "test"][: args.docs]
    models = {mode: BioGPT.from_pretrained(args.model, dtype=mode) for mode in MODES}
    for model in models.values():
        cpu.prepare(model)  # as `generate` runs them
    agree, nll, positions = dict.fromkeys(MODES, 0), dict.fromkeys(MODES, 0.0), 0

    def next_token_logits(model: BioGPT, ids: torch.Tensor) -> torch.Tensor:
        """fp32 logits (T - 1, V) after each of the first T - 1 tokens of `ids` (1, T)."""
        if not args.stepwise:
            return model(ids).logits[0, :-1].float()
        # as greedy decoding of one row runs: the prompt's first token, then one a step
        cache = model.new_cache(1, ids.shape[1])
        step = row_stepper(model)
        first = prefill(model, ids[:, :1], torch.ones(1, 1, dtype=torch.bool), cache)
        return torch.cat(
            [first, *(step(int(ids[0, t]), cache) for t in range(1, ids.shape[1] - 1))]
        )

    with torch.inference_mode():
        for doc in docs:
            text = doc["title"] + " " + doc["abstract"]
            ids = torch.tensor([tokenizer.encode(text)[: args.max_tokens]])
            targets = ids[0, 1:, None]
            reference = next_token_logits(models["fp32"], ids).argmax(-1)
            positions += targets.shape[0]
            for mode, model in models.items():
                logits = next_token_logits(model, ids)
                agree[mode] += int((logits.argmax(-1) == reference).sum())
                nll[mode] -= float(logits.log_softmax(-1).gather(1, targets).sum())
    how = "one token a step through the cache" if args.stepwise else "one forward pass each"
    print(f"model {args.model}, {len(docs)} held-out abstracts, {positions} positions, {how}")
    for mode in MODES:
        print(
            f"  {mode}: perplexity {math.exp(nll[mode] / positions):8.2f}, "
            f"top-1 agreement with fp32 {100 * agree[mode] / positions:6.2f}%"
        )


if __name__ == "__main__":
    main()
