"""Downstream tasks: a registry of `Task`s (data, formatting, parser, metric).

task = biogpt.tasks.get("bc5cdr")
examples = task.load("test", data_dir)
tokenizer.add_tokens(task.prompt())
ids, loss_mask = encode_example(tokenizer, task, examples[0])   # training sample
prompt = encode_prompt(tokenizer, task, examples[0].source)     # inference input
scores = score_predictions(task, examples, {id: generated_text})
"""

from __future__ import annotations

from biogpt.tasks.base import (
    Example,
    Hyperparameters,
    Parsed,
    Task,
    clean_answer,
    encode_example,
    encode_prompt,
    prompt_tokens,
    score_predictions,
    source_ids,
)
from biogpt.tasks.predictions import read_predictions, write_predictions
from biogpt.tasks.recorded import TASK_FILE, recorded_task, task_for_model, write_task_record
from biogpt.tasks.registry import get, names, register
from biogpt.tasks.relation import read_pubtator

__all__ = [
    "TASK_FILE",
    "Example",
    "Hyperparameters",
    "Parsed",
    "Task",
    "clean_answer",
    "encode_example",
    "encode_prompt",
    "get",
    "names",
    "prompt_tokens",
    "read_predictions",
    "read_pubtator",
    "recorded_task",
    "register",
    "score_predictions",
    "source_ids",
    "task_for_model",
    "write_predictions",
    "write_task_record",
]
