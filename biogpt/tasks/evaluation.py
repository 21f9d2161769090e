"""Predict with a fine-tuned model, score predictions, and evaluate (predict + score).

Inference is the paper's: greedy decoding from `</s> source learned1..N`, the answer being
the text generated after the prompt. Each task parses that text back to structure and
scores it with its own metric (`biogpt.tasks`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from biogpt.decoding.search import generate, left_pad
from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text, read_jsonl
from biogpt.model import BioGPT
from biogpt.tasks.base import Example, Task, encode_prompt, score_predictions
from biogpt.tasks.predictions import read_predictions
from biogpt.tokenizer import Tokenizer

# Called with each finished batch's (example id, answer) pairs, in the examples' order.
OnBatch = Callable[[list[tuple[str, str]]], None]

# Enough new tokens for every gold answer of the shared data (the longest RE targets list a
# dozen relations); short-answer tasks stop early at `</s>` anyway.
DEFAULT_MAX_NEW_TOKENS = {"pubmedqa": 32, "pubmedqa-rf": 32, "hoc": 64}
FALLBACK_MAX_NEW_TOKENS = 256


def max_new_tokens_for(task: Task, max_positions: int, prompt_length: int) -> int:
    """New tokens to allow after a prompt of `prompt_length`: the task's answer length, within
    the model's `max_positions`."""
    wanted = DEFAULT_MAX_NEW_TOKENS.get(task.name, FALLBACK_MAX_NEW_TOKENS)
    return max(1, min(wanted, max_positions - prompt_length))


def predict(
    model: BioGPT,
    tokenizer: Tokenizer,
    task: Task,
    examples: Sequence[Example],
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    progress: bool = True,
    on_batch: OnBatch | None = None,
    prompt_lookup: int = 0,
) -> dict[str, str]:
    """Greedy answers {example id: text after the prompt} for `examples`, in their order.

    A batch is the next `batch_size` examples, and `on_batch([(id, answer), ...])` is
    called as each one finishes (to append them to a file, or print them): the answers come
    out in the examples' order, so the output of a run stopped early is the start of the
    whole run's, which is what `biogpt.tasks.predictions` resumes. Sorting the prompts by
    length would pad less, but would tie the order to which examples are in the run. Each
    row decodes exactly as it would alone (`biogpt.decoding.search`), so the batch size
    changes the speed only. `prompt_lookup` > 0 drafts that many tokens from the source for
    each pass (`biogpt.decoding.speculative`): the same answers, faster only where it runs,
    which is batches of one example on a step it matches exactly.
    """
    if batch_size < 1:
        raise BioGPTError(f"batch_size must be positive, got {batch_size}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise BioGPTError(f"max_new_tokens must be positive, got {max_new_tokens}")
    prompts = [encode_prompt(tokenizer, task, ex.source) for ex in examples]
    starts = range(0, len(examples), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"predicting {task.name}", unit="batch")
    answers: dict[str, str] = {}
    for start in starts:
        batch = [ex.id for ex in examples[start : start + batch_size]]
        ids, mask = left_pad(prompts[start : start + batch_size], tokenizer.pad_id)
        width = ids.shape[1]
        limit = max_new_tokens or max_new_tokens_for(
            task, model.config.max_positions, width
        )  # given: >= 1
        out = generate(
            model,
            ids,
            mask,
            max_new_tokens=limit,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
            prompt_lookup=prompt_lookup,
        )
        finished = []
        for example_id, seq in zip(batch, out.sequences[:, width:].tolist(), strict=True):
            if tokenizer.eos_id in seq:
                seq = seq[: seq.index(tokenizer.eos_id)]
            finished.append((example_id, tokenizer.decode(seq)))
        answers.update(finished)
        if on_batch is not None:
            on_batch(finished)
    return answers


def evaluate(
    model: BioGPT,
    tokenizer: Tokenizer,
    task: Task,
    examples: Sequence[Example],
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    progress: bool = True,
    done: Mapping[str, str] | None = None,
    on_batch: OnBatch | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Predict and score; returns (metrics, predictions in the examples' order).

    `done` holds answers an earlier, interrupted run already made (a resumed predictions
    file): those examples are not predicted again; `on_batch` sees the new ones (`predict`).
    `seconds` in the metrics is the time of this call.
    """
    began = time.perf_counter()
    done = done or {}
    new = predict(
        model,
        tokenizer,
        task,
        [ex for ex in examples if ex.id not in done],
        batch_size,
        max_new_tokens,
        progress=progress,
        on_batch=on_batch,
    )
    predictions = {ex.id: done[ex.id] if ex.id in done else new[ex.id] for ex in examples}
    metrics = score_predictions(task, examples, predictions)
    metrics["seconds"] = round(time.perf_counter() - began, 3)
    return metrics, predictions


def text_examples(task: Task, texts: Sequence[tuple[str, str]]) -> list[Example]:
    """Examples (without gold) of raw (id, text) pairs, each text formatted as the task
    formats a document (`Task.source_of_text`)."""
    return [
        Example(id=key, source=task.source_of_text(text), target="", gold=None)
        for key, text in texts
    ]


def score_file(task: Task, examples: Sequence[Example], path: str | Path) -> dict[str, float]:
    """Score a predictions file against `examples` (`score_predictions`). A file with no
    predictions, or whose ids are none of the examples' (another split's, another
    task's), is a one-line error: it would score 0 as if the model had answered badly.
    Some examples without a prediction are counted as `missing`."""
    predictions = read_predictions(path)
    if not predictions:
        raise BioGPTError(f"{path}: no predictions")
    wanted = {ex.id for ex in examples}
    if not wanted.intersection(predictions):
        first = next(iter(predictions))
        raise BioGPTError(
            f"{path}: none of its {len(predictions)} ids is an id of the {len(examples)} "
            f"examples scored (its first is {first!r}, theirs {examples[0].id!r}): "
            "predictions of another split or task?"
        )
    return score_predictions(task, examples, predictions)


def read_texts(path: str | Path) -> list[tuple[str, str]]:
    """(id, text) of each record of a JSONL file of `{"id": ..., "text": ...}` (the raw
    inputs of `biogpt predict --input`). "text" must be a string; "id" (a string or an
    integer) defaults to the record's 0-based index among the file's records. A file that
    is not UTF-8 JSONL, a record without a string "text", a repeated id or no record at all
    is a one-line error naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise BioGPTError(f"{path}: no such file")
    texts: dict[str, str] = {}
    for index, (where, record) in enumerate(read_jsonl(path)):
        if not isinstance(record, dict) or "text" not in record:
            raise BioGPTError(f'{where}: expected a JSON object with "text" (and "id")')
        if not isinstance(record["text"], str):
            raise BioGPTError(f'{where}: "text" must be a string')
        key = record.get("id", index)
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise BioGPTError(f'{where}: "id" must be a string or an integer')
        if str(key) in texts:
            raise BioGPTError(f"{where}: id {str(key)!r} appears twice")
        texts[str(key)] = record["text"]
    if not texts:
        raise BioGPTError(f"{path}: no texts")
    return list(texts.items())


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
    examples = text_examples(task, [(str(i), text) for i, text in enumerate(texts)])
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
