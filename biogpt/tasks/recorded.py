"""The task a fine-tuned model was trained for, recorded beside its weights.

`biogpt finetune` writes `task.json` into every checkpoint it saves (and the averaged one):

    {"task": "bc5cdr", "options": {}, "prompt_tokens": ["learned1", ...], "template_version": 1}

so that `predict`, `evaluate` and `extract` find the task (its prompt tokens and template)
from the model alone. `options` are the task's constructor options (only `custom` has any).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text
from biogpt.tasks.base import Task
from biogpt.tasks.registry import get

TASK_FILE = "task.json"


def task_record(task: Task) -> dict[str, Any]:
    """What `task.json` holds for `task`."""
    return {
        "task": task.name,
        "options": task.options(),
        "prompt_tokens": task.prompt(),
        "template_version": task.template_version,
    }


def write_task_record(directory: str | Path, task: Task) -> Path:
    """Write `directory/task.json` for `task` (atomically); returns its path."""
    path = Path(directory) / TASK_FILE
    atomic_write_text(path, json.dumps(task_record(task), indent=2, sort_keys=True) + "\n")
    return path


def recorded_task(model_path: str | Path) -> Task | None:
    """The task recorded beside the model at `model_path` (a directory, or a file in one),
    or None when the model has no record (a base model, a Hub id, `mini`). A record that
    cannot be read, or names an unknown task, is a one-line error naming the file."""
    base = Path(model_path)
    path = (base if base.is_dir() else base.parent) / TASK_FILE
    if not base.exists() or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        name, options = record["task"], record.get("options") or {}
        if not isinstance(name, str) or not isinstance(options, dict):
            raise TypeError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise BioGPTError(f'{path}: not a task record (expected {{"task": NAME, ...}})') from None
    try:
        task = get(name, **options)
    except TypeError:
        raise BioGPTError(f"{path}: options {sorted(options)} do not fit task {name!r}") from None
    version = record.get("template_version", 1)
    if version != task.template_version:
        raise BioGPTError(
            f"{path}: the model was trained with {name}'s template version {version}, this "
            f"package formats version {task.template_version}"
        )
    return task


def task_for_model(model_path: str | Path, name: str | None, **options: Any) -> Task:
    """The task to run the model at `model_path` on: the one named (`--task`), checked
    against the model's record when it has one, else the recorded one. Neither is a
    one-line error asking for --task."""
    recorded = recorded_task(model_path)
    if name is None:
        if recorded is None:
            raise BioGPTError(
                f"--model {model_path}: the model records no task (it was not fine-tuned by "
                "biogpt finetune); pass --task"
            )
        return recorded
    task = get(name, **options)
    if recorded is not None and recorded.name != task.name:
        raise BioGPTError(
            f"--task {name}: the model {model_path} was fine-tuned for {recorded.name}; "
            f"leave --task out or pass --task {recorded.name}"
        )
    return recorded if recorded is not None and not options else task
