"""Predict with a fine-tuned model, score predictions, and evaluate (predict + score).

Inference is the paper's: greedy decoding from `</s> source learned1..N`, the answer being
the text generated after the prompt. Each task parses that text back to structure and
scores it with its own metric (`biogpt.tasks`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from biogpt.decoding.search import generate, left_pad
from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text
from biogpt.model import BioGPT
from biogpt.tasks import Example, Task, encode_prompt, score_predictions
from biogpt.tokenizer import Tokenizer

# Enough new tokens for every gold answer of the shared data (the longest RE targets list a
# dozen relations); short-answer tasks stop early at `</s>` anyway.
DEFAULT_MAX_NEW_TOKENS = {"pubmedqa": 32, "pubmedqa-rf": 32, "hoc": 64}
FALLBACK_MAX_NEW_TOKENS = 256


def max_new_tokens_for(task: Task, model: BioGPT, prompt_length: int) -> int:
    wanted = DEFAULT_MAX_NEW_TOKENS.get(task.name, FALLBACK_MAX_NEW_TOKENS)
    return max(1, min(wanted, model.config.max_positions - prompt_length))


def predict(
    model: BioGPT,
    tokenizer: Tokenizer,
    task: Task,
    examples: Sequence[Example],
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Greedy answers {example id: text after the prompt} for `examples`.

    Prompts are sorted by length so that a batch pads little; each row decodes exactly as it
    would alone, so the batch size changes speed only.
    """
    prompts = {ex.id: encode_prompt(tokenizer, task, ex.source) for ex in examples}
    order = sorted(prompts, key=lambda i: len(prompts[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"predicting {task.name}", unit="batch")
    answers: dict[str, str] = {}
    for batch in batches:
        ids, mask = left_pad([prompts[i] for i in batch], tokenizer.pad_id)
        width = ids.shape[1]
        limit = max_new_tokens or max_new_tokens_for(task, model, width)
        out = generate(
            model,
            ids,
            mask,
            max_new_tokens=limit,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )
        for example_id, seq in zip(batch, out.sequences[:, width:].tolist(), strict=True):
            if tokenizer.eos_id in seq:
                seq = seq[: seq.index(tokenizer.eos_id)]
            answers[example_id] = tokenizer.decode(seq)
    return answers


def evaluate(
    model: BioGPT,
    tokenizer: Tokenizer,
    task: Task,
    examples: Sequence[Example],
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, str]]:
    """Predict and score; returns (metrics, predictions)."""
    began = time.perf_counter()
    predictions = predict(
        model, tokenizer, task, examples, batch_size, max_new_tokens, progress=progress
    )
    metrics = score_predictions(task, examples, predictions)
    metrics["seconds"] = round(time.perf_counter() - began, 3)
    return metrics, predictions


def write_report(path: str | Path, report: Mapping[str, Any], overwrite: bool = False) -> None:
    path = Path(path)
    if path.exists() and not overwrite:
        raise BioGPTError(f"{path} exists; pass --overwrite to replace it")
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True) + "\n")


def structure(value: Any) -> Any:
    """A parsed answer as JSON: relation tuples become objects with named fields."""
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        names = {2: ("head", "tail"), 3: ("head", "tail", "relation")}.get(len(value[0]))
        if names:
            return [dict(zip(names, item, strict=True)) for item in value]
        return [list(item) for item in value]
    return value


def extract(
    model: BioGPT,
    tokenizer: Tokenizer,
    task: Task,
    texts: Sequence[str],
    max_new_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """Ad-hoc use: run the task on raw texts; each result has the answer text and its structure."""
    examples = [
        Example(id=str(i), source=task.source_of_text(text), target="", gold=None)
        for i, text in enumerate(texts)
    ]
    answers = predict(
        model, tokenizer, task, examples, max_new_tokens=max_new_tokens, progress=False
    )
    results = []
    for example, text in zip(examples, texts, strict=True):
        parsed = task.parse(answers[example.id], example)
        results.append(
            {
                "text": text,
                "answer": answers[example.id],
                task.name: structure(parsed.value),
                "unparseable": parsed.unparseable,
            }
        )
    return results
