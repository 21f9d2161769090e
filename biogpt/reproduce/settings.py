"""What a `biogpt reproduce` run is asked for, what it changes in the paper's recipe, and the
record (`reproduce.json`) that holds a resumed run to it.

The paper's recipe is not written here: each task's `hyperparameters`, turned into a
`TrainConfig` by `biogpt.training.finetune.task_train_config`, is the recipe. What a run
may do to it are caps, for a machine smaller than the paper's: `--epochs` and
`--max-updates` bound each task's training, `--train-limit` and `--test-limit` keep the
first examples of a split, `--max-new-tokens` shortens answers, `--dtype bf16` trains and
decodes in bfloat16, and `--lr`, `--warmup-updates` and `--tokens-per-update` replace the
recipe's optimisation (a few epochs of the recipe stay inside its warmup). Every cap that bites is a *recipe change*: `recipe_changes` lists them
per task as `{what: {"paper": value, "used": value}}`, recorded in reproduce.json and in each
task's result.json and printed, so that no report passes a scaled-down run off as the
paper's recipe. `--quick` is a preset of such caps (`QUICK`) for a smoke test.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text, read_json_record
from biogpt.tasks import Task, get
from biogpt.tasks.evaluation import predict
from biogpt.training.config import TrainConfig
from biogpt.training.finetune import task_train_config
from biogpt.training.settings import local_path

RECORD_FILE = "reproduce.json"

# The paper's tasks, in its table's order. PubMedQA runs with the reasoning-required input
# (question and contexts); `pubmedqa-rf`, the reasoning-free input of the paper's 78.2, runs
# when named.
PAPER_TASKS = ("bc5cdr", "kd-dti", "ddi", "pubmedqa", "hoc")
TASK_CHOICES = (*PAPER_TASKS, "pubmedqa-rf")
# Why a task cannot be fine-tuned from the data BioGPT's users have, where it is known.
NO_TRAINING_SPLIT = {"kd-dti": "BioGPT's release does not distribute KD-DTI's training split"}

# --quick: caps small enough that a tiny model runs every stage of every task in seconds.
QUICK: dict[str, Any] = {"train_limit": 16, "epochs": 1, "test_limit": 8, "max_new_tokens": 16}
# Settings a resumed run may change: they change how fast answers come, not what they are
# (each row decodes as it would alone, whatever the batch: `biogpt.tasks.evaluation.predict`;
# the device is the machine's, as `biogpt predict --resume` allows).
FREE = frozenset({"batch_size", "device"})
# TrainConfig fields that differ from the task's recipe without changing it (the paper
# names no seed).
NOT_RECIPE = frozenset({"seed"})


@dataclass(frozen=True)
class Settings:
    """Everything a reproduce run is asked for (the flags), after `--quick` filled its caps.

    None leaves a setting to the recipe: every epoch and update the task's config asks for,
    all examples, the task's own answer length, the config's seed.
    """

    model: str  # the base model: an absolute path where it is a local one, else a name
    tasks: tuple[str, ...]
    data: str | None  # the data root, absolute
    quick: bool = False
    dtype: str = TrainConfig.dtype  # training autocast and decoding weights
    batch_size: int = inspect.signature(predict).parameters["batch_size"].default
    seed: int | None = None
    epochs: int | None = None  # at most this many epochs per task
    max_updates: int | None = None  # at most this many optimiser updates per task
    train_limit: int | None = None  # the first N training examples
    test_limit: int | None = None  # the first N test examples
    max_new_tokens: int | None = None  # answer length limit (default: the task's)
    # The recipe's optimisation, changed (a short run on a small machine may need a shorter
    # warmup, more updates an epoch, another peak learning rate to learn anything at all).
    lr: float | None = None
    warmup_updates: int | None = None
    tokens_per_update: int | None = None
    device: str = "cpu"  # where predictions decode (fine-tuning runs on the CPU)

    def with_quick(self) -> Settings:
        """`--quick`'s caps where no flag set one (a flag given with --quick wins)."""
        if not self.quick:
            return self
        return replace(self, **{k: v for k, v in QUICK.items() if getattr(self, k) is None})

    def train_config(self, task: Task) -> TrainConfig:
        """The task's recipe with this run's caps: `--epochs` and `--max-updates` bound it
        (each only lowers the recipe's bound; a bound of 0, none, becomes the cap)."""
        paper = task_train_config(task)
        overrides: dict[str, Any] = {"dtype": self.dtype}
        if self.seed is not None:
            overrides["seed"] = self.seed
        for name, cap in (("max_epochs", self.epochs), ("max_updates", self.max_updates)):
            bound = getattr(paper, name)
            if cap is not None and (bound == 0 or cap < bound):
                overrides[name] = cap
        for name in ("lr", "warmup_updates", "tokens_per_update"):
            if getattr(self, name) is not None:
                overrides[name] = getattr(self, name)
        return task_train_config(task, **overrides)

    def recipe_changes(self, task: Task) -> dict[str, dict[str, Any]]:
        """Where this run departs from the paper's recipe for `task`:
        `{what: {"paper": value, "used": value}}`; empty for the paper's recipe. "all"
        stands for every example, "the task's" for the task's own answer length."""
        paper, used = asdict(task_train_config(task)), asdict(self.train_config(task))
        changes = {
            name: {"paper": paper[name], "used": used[name]}
            for name in paper
            if paper[name] != used[name] and name not in NOT_RECIPE
        }
        for name, value, default in (
            ("train_examples", self.train_limit, "all"),
            ("test_examples", self.test_limit, "all"),
            ("max_new_tokens", self.max_new_tokens, "the task's"),
        ):
            if value is not None:
                changes[name] = {"paper": default, "used": value}
        return changes

    def record(self) -> dict[str, Any]:
        """reproduce.json's "settings": every flag and cap, and each task's recipe changes."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["tasks"] = list(self.tasks)
        values["recipe_changes"] = {name: self.recipe_changes(get(name)) for name in self.tasks}
        return values


def flag(name: str) -> str:
    """The flag that sets field `name` of `Settings`."""
    return {"tasks": "--task", "data": "--data", "model": "--model"}.get(
        name, "--" + name.replace("_", "-")
    )


def shown(name: str, value: Any) -> str:
    """A setting as a command line writes it: `--epochs 3`, `--quick`, `without --quick`."""
    if isinstance(value, bool):
        return flag(name) if value else f"without {flag(name)}"
    if value is None:
        return f"without {flag(name)}"
    if isinstance(value, (list, tuple)):  # --task, given once for each
        return " ".join(f"{flag(name)} {item}" for item in value)
    return f"{flag(name)} {value}"


def started_with(name: str, value: Any) -> str:
    """`with --epochs 1`, `without --quick`: how a run was started, in words."""
    setting = shown(name, value)
    return setting if setting.startswith("without ") else f"with {setting}"


def change_summary(changes: Mapping[str, Mapping[str, Any]]) -> str:
    """`the paper's recipe`, or `not the paper's recipe: max_epochs 1 (paper 100), ...`
    (a bound of 0 on epochs or updates is written `none`: 0 is no bound)."""
    if not changes:
        return "the paper's recipe"

    def value(name: str, v: Any) -> Any:
        return "none" if name in ("max_epochs", "max_updates") and v == 0 else v

    return "not the paper's recipe: " + ", ".join(
        f"{k} {value(k, v['used'])} (paper {value(k, v['paper'])})" for k, v in changes.items()
    )


# --------------------------------------------------------------------------------------------
# reproduce.json
# --------------------------------------------------------------------------------------------


def read_record(out: Path) -> dict[str, Any] | None:
    """The record of the run in `out`, or None where there is none."""
    return read_json_record(
        out / RECORD_FILE, "settings", "not a reproduce record; start a new run (--out)"
    )


def write_record(out: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(out / RECORD_FILE, json.dumps(record, indent=2) + "\n")


def resumed(out: Path, recorded: Mapping[str, Any], given: Mapping[str, Any]) -> Settings:
    """The settings of the run recorded in `out`, with the flags `given` now (None: left
    out, the recorded value stands). A flag given with another value is a one-line error
    naming it and both values, except the `FREE` ones, which the resumed run takes."""
    before = dict(recorded["settings"])
    before.pop("recipe_changes", None)
    for name, value in given.items():
        if value is None or name not in before or name in FREE:
            continue
        old = before[name]
        same = (
            local_path(value) == local_path(old)
            if name in ("model", "data") and old is not None
            else list(value) == list(old)
            if isinstance(value, (list, tuple))
            else value == old
        )
        if not same:
            raise BioGPTError(
                f"{shown(name, value)}: the run in {out} was started {started_with(name, old)}; "
                f"start a new run (--out) or leave {flag(name)} out"
            )
    now = {**before, **{k: v for k, v in given.items() if v is not None and k in before}}
    now["tasks"] = tuple(now["tasks"])
    try:
        return Settings(**now)
    except TypeError as err:
        raise BioGPTError(f"{out / RECORD_FILE}: not this version's settings ({err})") from None
