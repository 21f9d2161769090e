"""What a training run was started with (`run.json`), and a resumed run held to it.

A run directory records its settings beside `log.jsonl`, so that `--resume` continues the
run that was started there rather than a different one under the same name:

    {"command": "finetune",
     "finetune": {"task": {...task.json's record...}, "model": "/abs/base", "data": "/abs/data",
                  "limit": null, "validate": true},
     "train": {...every TrainConfig field...}}

(`"pretrain": {...every PretrainConfig field...}` for pretraining; a bare `train` call
records only "train".) Resuming compares what is asked now with what was recorded: a
setting given anew with another value is refused, naming its flag and both values; one
left out takes the recorded value. Two changes are allowed and said on stderr: training
longer (`--epochs`, `--max-updates`), since a run stopped early is a prefix of a longer one
until the schedule's length matters ("cosine" decays over `max_updates`); and the settings
in `FREE`, which change how a run computes or saves, not what it computes. A run from
before `run.json` continues unchecked, with a note saying so.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text, read_json_record
from biogpt.training.config import flag, setting
from biogpt.training.state import check_checkpoint, resume_point

__all__ = [
    "FREE",
    "LONGER",
    "RUN_FILE",
    "check_out_dir",
    "compare",
    "holds_run",
    "local_path",
    "read_run",
    "refuse_other_command",
    "say",
    "write_run",
]

RUN_FILE = "run.json"
# Settings that a resumed run may change freely: where and how fast it computes, what it
# prints, where it writes, how many old checkpoints it keeps.
FREE = frozenset(
    {"out", "device", "compile", "activation_checkpointing", "distributed", "log_every",
     "keep_last"}
)  # fmt: skip
# Settings that a resumed run may raise (0 is no bound, the most of all).
LONGER = frozenset({"max_epochs", "max_updates"})
# Settings that name a file or folder: compared where they lead, not as written.
PATHS = frozenset({"model", "data", "init_from"})


def local_path(value: str | Path | None) -> str | None:
    """An existing local path made absolute, so a run resumed from another directory finds
    it; anything else (a Hub id, `mini`, a path that does not exist) as written."""
    if value is None:
        return None
    path = Path(value)
    return str(path.resolve()) if str(value) and path.exists() else str(value)


def holds_run(out_dir: Path) -> bool:
    """Whether `out_dir` holds (part of) a training run: a log, checkpoints or settings."""
    return any((out_dir / name).exists() for name in ("checkpoints", "log.jsonl", RUN_FILE))


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, a run directory that cannot be one or cannot be written, an
    earlier run there that the flags do not say what to do with, and, resuming, a damaged
    checkpoint to resume from."""
    if resume and overwrite:
        raise BioGPTError(
            f"--resume and --overwrite: pass one (--resume continues the run in {out_dir}, "
            "--overwrite deletes it)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise BioGPTError(f"--out {out_dir}: a file, not a run directory")
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise BioGPTError(f"--out {out_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BioGPTError(f"--out {out_dir}: cannot write in {existing} (permission denied)")
    if out_dir.is_dir() and holds_run(out_dir) and not (resume or overwrite):
        raise BioGPTError(
            f"--out {out_dir}: already holds a training run; pass --resume to continue it or "
            "--overwrite to start over"
        )
    point = resume_point(out_dir) if resume else None
    if point is not None:
        if not point.is_dir():
            raise BioGPTError(f"{out_dir / 'checkpoints' / 'last'}: names {point.name}, missing")
        check_checkpoint(point)


def read_run(out_dir: Path) -> dict[str, Any] | None:
    """The settings `out_dir` recorded (`run.json`), or None where there are none."""
    return read_json_record(
        out_dir / RUN_FILE,
        "train",
        "not a run record (expected JSON with the run's settings); start a new run (--out) "
        "or --overwrite this one",
    )


def write_run(out_dir: Path, record: Mapping[str, Any]) -> None:
    """Record the settings of the run in `out_dir` (atomically: never half a file)."""
    atomic_write_text(out_dir / RUN_FILE, json.dumps(record, indent=2) + "\n")


def refuse_other_command(out_dir: Path, recorded: Mapping[str, Any], command: str) -> None:
    """A one-line error unless the run in `out_dir` was started by `command`."""
    started = recorded.get("command", "train")
    if started != command:
        raise BioGPTError(
            f"--resume: the run in {out_dir} was started by `biogpt {started}` (its "
            f"{RUN_FILE}); continue it with that command"
        )


def _same(name: str, a: Any, b: Any) -> bool:
    if name in PATHS and a and b:
        return local_path(a) == local_path(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _longer(new: Any, old: Any) -> bool:
    """Whether bound `new` lets a run train longer than `old` (0: no bound)."""
    return (new == 0 and old != 0) or (old != 0 and new > old)


def compare(out_dir: Path, recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Check the settings `wanted` for the resumed run in `out_dir` against `recorded`.

    A one-line error for the first one that differs and may not; the notes of the changes
    allowed (`--epochs 5 (was 3)`) are returned. Only the names in `wanted` are compared:
    a caller passes what was given, or all of a complete config.
    """
    notes = []
    for name, value in wanted.items():
        if name not in recorded or name in FREE or _same(name, value, recorded[name]):
            continue
        old = recorded[name]
        if name in LONGER and _longer(value, old):
            notes.append(f"{setting(name, value)} (was {old})")
            continue
        shorter = name in LONGER and not _longer(value, old)
        advice = (
            "a resumed run may train longer, not shorter"
            if shorter
            else f"start a new run (--out) or leave {flag(name)} out"
        )
        raise BioGPTError(
            f"{setting(name, value)}: the run in {out_dir} was started with "
            f"{setting(name, old)}; {advice}"
        )
    return notes


def say(message: str) -> None:
    """A note on stderr: a resumed run's allowed changes, settings that cannot be checked."""
    print(f"biogpt: {message}", file=sys.stderr)
