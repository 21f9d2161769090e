"""`biogpt reproduce`: the paper's fine-tuning and evaluation of every task, one command.

    DIR/reproduce.json   what the run was asked for (model, tasks, every flag and cap, the
                         recipe changes), its estimate, the package and the machine
    DIR/TASK/...         each task's stages (`biogpt.reproduce.stages`)
    DIR/report/          the report over the results (`biogpt.report.build`)

`reproduce` checks everything it can refuse first (the run directory, the flags against a
run being resumed, the tasks and their data), then estimates the time and memory the run
needs here (`biogpt.reproduce.estimate`), then runs each task's stages, then writes the
report and prints the headline: each task's main metric beside the paper's.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from biogpt.api import BioGPT
from biogpt.checkpoint.pipeline import checkpoint_hash, tokenizer_for
from biogpt.errors import BioGPTError
from biogpt.report.paper import TASK_NOTES, paper_number
from biogpt.report.provenance import hardware_info, package_info
from biogpt.reproduce.estimate import count_work, estimate, probe, table
from biogpt.reproduce.settings import (
    NO_TRAINING_SPLIT,
    PAPER_TASKS,
    Settings,
    change_summary,
    read_record,
    resumed,
    write_record,
)
from biogpt.reproduce.stages import RESULT_FILE, run_task, say
from biogpt.tasks import Task, get
from biogpt.tasks.base import default_data_dir
from biogpt.training.settings import local_path

REPORT_DIR = "report"
# The settings `reproduce` takes as keyword flags: those of `Settings` that the caller sets
# (the model, tasks and data are arguments of their own; the device is the machine's).
FLAGS = frozenset(Settings.__dataclass_fields__) - {"model", "tasks", "data", "device"}


def reproduce(
    model: str | None,
    out: str | Path | None,
    tasks: Sequence[str] | None = None,
    data: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    estimate_only: bool = False,
    progress: bool = True,
    trust_pickle: bool = False,
    **flags: Any,
) -> list[dict[str, Any]]:
    """Fine-tune `model` on each task with the paper's recipe, predict and score its test
    split, under `out`; returns the tasks' result.json records (none with `estimate_only`,
    which writes nothing). `flags` are the other fields of `Settings` (quick, dtype,
    batch_size, seed, epochs, max_updates, train_limit, test_limit, max_new_tokens), None
    where not given. `tasks` None: every paper task whose training split is under `data`.
    With `resume` the run recorded in `out` continues with its settings (one given anew
    with another value is refused); a finished stage is not done again. `trust_pickle`
    lets a base model in a pickled file (fairseq's checkpoint.pt) load: it runs its code.
    """
    unknown = sorted(set(flags) - FLAGS)
    if unknown:
        raise BioGPTError(f"unknown settings: {', '.join(unknown)}")
    out_dir = Path(out) if out is not None else None
    if out_dir is None and not estimate_only:
        raise BioGPTError("--out: required (the run directory)")
    recorded = None
    if out_dir is not None and (resume or not estimate_only):  # an estimate alone writes nothing
        recorded = check_out_dir(out_dir, resume, overwrite)
    given = {**flags, "model": local_path(model), "data": local_path(data)}
    given["device"] = default_device()
    if out_dir is not None and recorded is not None:
        settings = resumed(out_dir, recorded, {**given, "tasks": tuple(tasks) if tasks else None})
    else:
        settings = new_settings(given, tasks)
    chosen = [get(name) for name in settings.tasks]
    for task in chosen:
        say(f"{task.name}: {change_summary(settings.recipe_changes(task))}")

    if recorded is not None and "estimate" in recorded and not estimate_only:
        say("the estimate made when the run started (the same work, measured then):")
        estimated = recorded["estimate"]
    else:
        estimated = work_estimate(settings, chosen, trust_pickle)
    print(table(estimated), flush=True)
    if estimate_only or out_dir is None:
        return []
    if recorded is None:
        if overwrite and out_dir.exists():
            shutil.rmtree(out_dir)  # an earlier reproduce run (`check_out_dir`), now replaced
        out_dir.mkdir(parents=True, exist_ok=True)
        write_record(out_dir, run_record(settings, estimated))
    results = [run_task(task, settings, out_dir, progress, trust_pickle) for task in chosen]
    write_report(out_dir, settings.data)
    print(headline(results), flush=True)
    return results


# --------------------------------------------------------------------------------------------
# Checks made before any work
# --------------------------------------------------------------------------------------------


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Refuse a run directory the flags do not say what to do with; the recorded run to
    continue (`resume`), if any. `overwrite` may replace an earlier reproduce run, never a
    folder of other files."""
    if resume and overwrite:
        raise BioGPTError(f"--resume and --overwrite: pass one (--resume continues {out})")
    if out.exists() and not out.is_dir():
        raise BioGPTError(f"--out {out}: a file, not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    recorded = read_record(out)
    if resume:
        if recorded is None:
            raise BioGPTError(f"--out {out}: holds no reproduce.json, so no run to continue")
        return recorded
    if not overwrite:
        raise BioGPTError(
            f"--out {out}: not empty; pass --resume to continue the run there or --overwrite "
            "to start it again"
        )
    if recorded is None:
        raise BioGPTError(f"--out {out}: holds files but no reproduce run; not deleting them")
    return None  # deleted once every check has passed


def new_settings(given: dict[str, Any], tasks: Sequence[str] | None) -> Settings:
    """The settings of a run started now: the flags `given` (None: not given), the data
    root and the tasks checked, `--quick`'s caps filled in."""
    if given["model"] is None:
        raise BioGPTError("--model: required to start a run")
    root = data_root(given["data"])
    chosen = choose_tasks(tasks, root)
    values = {k: v for k, v in given.items() if v is not None}
    values.update(tasks=tuple(task.name for task in chosen), data=root)
    return Settings(**values).with_quick()


def data_root(data: str | Path | None) -> str:
    """The data root (--data, else $BIOGPT_DATA), absolute, so a resumed run reads the same."""
    root = Path(data) if data is not None else default_data_dir()
    if not root.is_dir():
        raise BioGPTError(f"--data {root}: no such directory")
    return str(root.resolve())


def choose_tasks(names: Sequence[str] | None, data: str) -> list[Task]:
    """The tasks asked for, each able to fine-tune from `data`: one named that cannot is a
    one-line error saying why; by default every paper task, those without a training split
    skipped with a line on stderr."""
    chosen = []
    for name in dict.fromkeys(names or PAPER_TASKS):
        task = get(name)
        why = missing_training_split(task, data)
        if why is None:
            chosen.append(task)
        elif names:
            raise BioGPTError(f"--task {name}: cannot be fine-tuned: {why}")
        else:
            print(f"biogpt reproduce: skipping {name}: {why}", file=sys.stderr)
    if not chosen:
        raise BioGPTError(f"--data {data}: holds the training split of no paper task")
    return chosen


def missing_training_split(task: Task, data: str) -> str | None:
    """Why `task` has no training split under `data`, or None where it has one."""
    try:
        examples = task.load("train", data)
    except BioGPTError as err:
        return (
            f"{NO_TRAINING_SPLIT[task.name]} ({err})"
            if task.name in NO_TRAINING_SPLIT
            else str(err)
        )
    return None if examples else "its training split has no examples"


# --------------------------------------------------------------------------------------------
# Estimate and record
# --------------------------------------------------------------------------------------------


def work_estimate(
    settings: Settings, tasks: Sequence[Task], trust_pickle: bool = False
) -> dict[str, Any]:
    """Count each task's work, probe this machine's speed on the base model, and put the
    two together (`biogpt.reproduce.estimate`)."""
    say(f"estimating: counting tokens and timing a few steps of {settings.model}")
    model = BioGPT.from_pretrained(settings.model, trust_pickle=trust_pickle)
    tokenizer = tokenizer_for(settings.model, model.config.vocab_size)
    prompts = [t for task in tasks for t in task.prompt()]
    tokenizer.add_tokens(
        [t for t in dict.fromkeys(prompts) if tokenizer.token_to_id(t) == tokenizer.unk_id]
    )
    work = [count_work(task, tokenizer, settings, model, settings.data) for task in tasks]
    return estimate(model, tasks, work, probe(model, work, settings), settings)


def run_record(settings: Settings, estimated: dict[str, Any]) -> dict[str, Any]:
    """reproduce.json: what the report reads to say what was run, how and where."""
    return {
        "command": "reproduce",
        "model": settings.model,
        "checkpoint_hash": checkpoint_hash(settings.model),
        "tasks": list(settings.tasks),
        "quick": settings.quick,
        "settings": settings.record(),
        "estimate": estimated,
        "package": package_info(),
        "hardware": hardware_info(),
        "data": settings.data,
    }


# --------------------------------------------------------------------------------------------
# Report and headline
# --------------------------------------------------------------------------------------------


def write_report(out: Path, data: str | None) -> Path:
    """The report over this run's results in out/report (`biogpt.report.build`), written
    again only where a result is newer than it (a rerun that finished more tasks)."""
    from biogpt.report.build import write_report as build

    report = out / REPORT_DIR / "report.json"
    results = list(out.glob(f"*/{RESULT_FILE}"))
    if report.is_file() and all(r.stat().st_mtime <= report.stat().st_mtime for r in results):
        say(f"report: written before ({report}); kept")
        return report
    say(f"writing the report to {out / REPORT_DIR}")
    return build([out], out / REPORT_DIR, data_dir=data, overwrite=True)


def headline(results: Sequence[dict[str, Any]]) -> str:
    """Each task's main metric, in percent, beside the paper's number for it
    (`biogpt.report.paper`: none where the paper measured another setting); a run that
    changed the recipe says so on its row, and the notes follow the table."""
    lines = [f"{'task':<12} {'metric':<10} {'ours':>7} {'paper':>7}  recipe"]
    notes = []
    for result in results:
        task = get(result["task"])
        ours = 100 * result["metrics"][task.main_metric]
        paper = paper_number(task.name, result["split"], task.main_metric)
        shown = f"{paper.percent:.2f}" if paper is not None else "-"
        changed = result["recipe_changes"]
        recipe = "quick" if result["quick"] else ("scaled" if changed else "paper")
        lines.append(f"{task.name:<12} {task.main_metric:<10} {ours:>7.2f} {shown:>7}  {recipe}")
        if paper is None and task.name in TASK_NOTES:
            notes.append(f"{task.name}: {TASK_NOTES[task.name]}")
        if changed:
            notes.append(f"{task.name}: {change_summary(changed)}")
    return "\n".join(lines + notes)


def default_device() -> str:
    """Where predictions decode: the GPU where torch sees one (fine-tuning runs on the CPU)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
