"""What `biogpt report` reads: each INPUT becomes one or more `Source`s, a predictions file
with everything known about how it was made.

An INPUT is one of
- a `biogpt reproduce` run directory (it holds `reproduce.json`): one source per task
  directory with a `result.json`; a task without one is an unfinished stage, reported in
  one line and left out;
- a report JSON of `biogpt evaluate --report` (`task`, `split`, `model`, `predictions`,
  `limit`, the metrics);
- `TASK:SPLIT:PREDICTIONS.jsonl`, a predictions file as `biogpt score` reads it.
A predictions file's `.meta.json` record (`biogpt.tasks.predictions`), where there is one,
adds the model and decoding settings the other inputs do not say. The model's folder, where
it is found, adds the weights' hash, the template version and the training run's log.
Whatever no input says stays None (null in report.json).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biogpt.checkpoint import checkpoint_hash
from biogpt.errors import BioGPTError
from biogpt.tasks import TASK_FILE, names
from biogpt.tasks.predictions import meta_path
from biogpt.tasks.registry import get

RUN_FILE = "reproduce.json"  # what makes a folder a reproduce run
RESULT_FILE = "result.json"  # a finished task stage of a reproduce run
LOG_FILE = "log.jsonl"  # a training run's log (`biogpt.training.loop`)
TRAIN_LOG = Path("train") / LOG_FILE  # a task stage's fine-tuning log
# A training run's folder holds log.jsonl beside averaged/ and checkpoints/epochN/, so the
# log of a model's run is looked for this many folders above the model's own.
LOG_LEVELS = 2


@dataclass
class Source:
    """One predictions file to score, and what produced it (as far as the input says)."""

    input: str  # the INPUT as given
    kind: str  # "reproduce", "evaluate" or "predictions"
    task: str
    split: str
    predictions: Path
    limit: int | None = None  # the split's first N examples were predicted (None: all)
    data: str | None = None  # the data root the input recorded
    model: str | None = None
    checkpoint_hash: str | None = None
    template_version: int | None = None
    decoding: dict[str, Any] | None = None
    base_model: str | None = None  # what a reproduce run fine-tuned from
    base_checkpoint_hash: str | None = None
    package: dict[str, Any] | None = None
    hardware: dict[str, Any] | None = None
    train_seconds: float | None = None
    predict_seconds: float | None = None
    tokens_per_s: float | None = None
    quick: bool | None = None  # a reproduce run's --quick smoke test
    # where a reproduce run departed from the paper's recipe: {what: {"paper": v, "used": v}}
    recipe_changes: dict[str, Any] | None = None
    log: Path | None = None  # a training log.jsonl, for the loss curve
    recorded: dict[str, Any] = field(default_factory=dict)  # the metrics the input states
    # the input's folder: a relative path it names (the model) is looked up there first
    folder: Path | None = None

    def record(self) -> dict[str, Any]:
        """The JSON entry of report.json's `sources`."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("recorded", "folder")}
        out["predictions"] = str(self.predictions)
        out["log"] = None if self.log is None else str(self.log)
        return out


def read_object(path: Path) -> dict[str, Any]:
    """A JSON object file; a one-line error naming it otherwise."""
    # Not `biogpt.tasks.relation.read_json`: it lets a missing or unreadable file out as a
    # bare OSError, and every error here must name the file in one line.
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BioGPTError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BioGPTError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(data, dict):
        raise BioGPTError(f"{path}: expected a JSON object")
    return data


def read_sources(inputs: Sequence[str | Path], note: Callable[[str], None]) -> list[Source]:
    """The sources of every INPUT, in order; `note` gets one line per unfinished stage."""
    if not inputs:
        raise BioGPTError("no INPUT to report on")
    sources: list[Source] = []
    for given in inputs:
        sources.extend(sources_of(str(given), note))
    for source in sources:
        complete(source)
    return sources


def sources_of(given: str, note: Callable[[str], None]) -> list[Source]:
    """Recognise one INPUT by what is at its path, else as TASK:SPLIT:FILE."""
    path = Path(given)
    if path.is_dir():
        if not (path / RUN_FILE).is_file():
            raise BioGPTError(f"{path}: a directory without {RUN_FILE} (not a reproduce run)")
        return run_sources(path, given, note)
    if path.is_file():
        if path.suffix == ".jsonl":
            raise BioGPTError(f"{given}: a predictions file is given as TASK:SPLIT:{given}")
        return [evaluate_source(path, given)]
    if given.count(":") >= 2:
        return [spec_source(given)]
    raise BioGPTError(
        f"{given}: no such file or directory (expected a reproduce run, an evaluate report "
        "or TASK:SPLIT:PREDICTIONS.jsonl)"
    )


def checked_task(name: Any, where: str) -> str:
    if not isinstance(name, str) or name not in names():
        raise BioGPTError(f"{where}: unknown task {name!r}: expected one of {', '.join(names())}")
    return name


def checked_split(task: str, split: Any, where: str) -> str:
    try:
        splits = get(task).splits
    except TypeError:  # `custom`: its template is an option no input records
        raise BioGPTError(f"{where}: task {task} needs options; it cannot be reported") from None
    if not isinstance(split, str) or split not in splits:
        raise BioGPTError(f"{where}: task {task} has no split {split!r} ({', '.join(splits)})")
    return split


def optional_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BioGPTError(f"{where}: limit must be a positive integer or null, got {value!r}")
    return value


def spec_source(given: str) -> Source:
    """`TASK:SPLIT:FILE` (the file's own path may hold further colons)."""
    task, split, file = given.split(":", 2)
    if not task or not split or not file:
        raise BioGPTError(f"{given}: expected TASK:SPLIT:PREDICTIONS.jsonl")
    task = checked_task(task, given)
    split = checked_split(task, split, given)
    if not Path(file).is_file():
        raise BioGPTError(f"{given}: no such predictions file {file}")
    return Source(input=given, kind="predictions", task=task, split=split, predictions=Path(file))


def evaluate_source(path: Path, given: str) -> Source:
    """A `biogpt evaluate --report` JSON. Its `predictions` and `model` paths are relative
    to the folder `evaluate` ran in: looked up beside the report first, then from here."""
    report = read_object(path)
    missing = [key for key in ("task", "split", "predictions") if key not in report]
    if missing:
        raise BioGPTError(
            f"{path}: not an evaluate report (no {', '.join(missing)}); a predictions file is "
            "given as TASK:SPLIT:FILE"
        )
    task = checked_task(report["task"], str(path))
    kept = Path(str(report["predictions"]))
    candidates = [kept] if kept.is_absolute() else [path.parent / kept, kept]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise BioGPTError(f"{path}: its predictions file {kept} is not there (nor beside it)")
    metrics = {k: v for k, v in report.items() if isinstance(v, (int, float))}
    return Source(
        input=given,
        kind="evaluate",
        task=task,
        split=checked_split(task, report["split"], str(path)),
        predictions=found,
        limit=optional_int(report.get("limit"), str(path)),
        model=report.get("model"),
        predict_seconds=report.get("seconds"),
        recorded={k: v for k, v in metrics.items() if k not in ("limit", "seconds")},
        folder=path.parent,
    )


def run_sources(run: Path, given: str, note: Callable[[str], None]) -> list[Source]:
    """One source per finished task of a reproduce run (see the module docstring)."""
    header = read_object(run / RUN_FILE)
    tasks = header.get("tasks")
    if not isinstance(tasks, list):
        raise BioGPTError(f'{run / RUN_FILE}: expected a list under "tasks"')
    sources = []
    for name in tasks:
        stage = run / str(name)
        if not (stage / RESULT_FILE).is_file():
            note(f"{stage}: no {RESULT_FILE} (an unfinished stage); left out of the report")
            continue
        result = read_object(stage / RESULT_FILE)
        where = str(stage / RESULT_FILE)
        task = checked_task(result.get("task", name), where)
        kept = stage / str(result.get("predictions", "test.predictions.jsonl"))
        if not kept.is_file():
            raise BioGPTError(f"{where}: its predictions file {kept} is not there")
        log = stage / TRAIN_LOG
        sources.append(
            Source(
                input=given,
                kind="reproduce",
                task=task,
                split=checked_split(task, result.get("split", "test"), where),
                predictions=kept,
                limit=optional_int(result.get("limit"), where),
                data=result.get("data") or header.get("data"),
                model=result.get("model"),
                checkpoint_hash=result.get("checkpoint_hash"),
                template_version=result.get("template_version"),
                decoding=result.get("decoding"),
                base_model=header.get("model"),
                base_checkpoint_hash=header.get("checkpoint_hash"),
                package=header.get("package"),
                hardware=header.get("hardware"),
                train_seconds=result.get("train_seconds"),
                predict_seconds=result.get("predict_seconds"),
                tokens_per_s=result.get("tokens_per_s"),
                quick=result.get("quick", header.get("quick")),
                recipe_changes=result.get("recipe_changes"),
                log=log if log.is_file() else None,
                recorded=dict(result.get("metrics") or {}),
                folder=stage,
            )
        )
    return sources


def loose_record(path: Path, key: str | None = None) -> dict[str, Any]:
    """A side record (a predictions file's meta, a model's task.json), or {} where it is
    missing or unreadable: such a record only adds detail, so its absence stops nothing."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if isinstance(data, dict) and key is not None:
        data = data.get(key)
    return data if isinstance(data, dict) else {}


def model_location(recorded: str | None, written: str | None, folder: Path | None) -> Path | None:
    """Where the model's files are, or None where they are nowhere to be found: the
    absolute `--model` of the predictions' meta record (`predict` and `evaluate` resolve
    it), else the model the input names, relative to the input's folder first (where
    `evaluate` ran, as its predictions are), then to here."""
    candidates = []
    if recorded is not None and Path(recorded).is_absolute():
        candidates.append(Path(recorded))
    if written is not None:
        if not Path(written).is_absolute() and folder is not None:
            candidates.append(folder / written)
        candidates.append(Path(written))
    return next((path for path in candidates if path.exists()), None)


def training_log(model: Path) -> Path | None:
    """The log.jsonl of the training run that wrote `model` (`RUN/averaged`,
    `RUN/checkpoints/epochN`), looked for up to LOG_LEVELS folders above the model's."""
    folder = (model if model.is_dir() else model.parent).resolve()
    for run in folder.parents[:LOG_LEVELS]:
        if (run / LOG_FILE).is_file():
            return run / LOG_FILE
    return None


def complete(source: Source) -> None:
    """Fill in what the predictions' meta record and the model's folder tell: the model,
    decoding settings and data root of the run that wrote the file, the weights' hash, the
    template version recorded beside them and the log of the run that trained them."""
    run = loose_record(meta_path(source.predictions), "run")
    recorded = run.get("--model") if isinstance(run.get("--model"), str) else None
    written = source.model
    anywhere = recorded is not None and Path(recorded).is_absolute()
    if anywhere and (written is None or not Path(written).is_absolute()):
        source.model = recorded  # the same model as the input's, named from anywhere
    source.model = source.model or recorded
    source.data = source.data or run.get("--data")
    if source.decoding is None and ("--dtype" in run or "--max-new-tokens" in run):
        source.decoding = {
            "strategy": "greedy",
            "dtype": run.get("--dtype"),
            "max_new_tokens": run.get("--max-new-tokens"),
        }
    model = model_location(recorded, written, source.folder)
    if model is None:
        return
    if source.checkpoint_hash is None:
        with contextlib.suppress(BioGPTError, OSError):  # a folder without weights
            source.checkpoint_hash = checkpoint_hash(model)
    if source.template_version is None:
        folder = model if model.is_dir() else model.parent
        source.template_version = loose_record(folder / TASK_FILE).get("template_version")
    if source.log is None:
        source.log = training_log(model)
