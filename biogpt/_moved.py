"""Old import paths of modules that moved into packages, kept working for one release.

`import biogpt.generation` (and `from biogpt.generation import generate`) still works: the
finder below answers for each old name with the module at its new place, under a
DeprecationWarning that names the new path. Nothing in the package imports an old path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

# old module name (under biogpt.) -> where it lives now
MOVED = {
    "generation": "biogpt.decoding.search",
    "logits": "biogpt.decoding.logits",
    "completion": "biogpt.decoding.completion",
    "scoring": "biogpt.decoding.scoring",
    "static_step": "biogpt.decoding.static_step",
    "packing": "biogpt.cpu.packing",
    "gemv": "biogpt.cpu.gemv",
    "fused": "biogpt.cpu.fused",
    "_cpu": "biogpt.cpu._cpu",
    "evaluation": "biogpt.tasks.evaluation",
    "metrics": "biogpt.tasks.metrics",
    "train": "biogpt.training.loop",
    "train_state": "biogpt.training.state",
    "data": "biogpt.training.batching",
    "loss": "biogpt.training.loss",
    "plot": "biogpt.training.plot",
    "finetune": "biogpt.training.finetune",
    "pretrain": "biogpt.training.pretrain",
    "shards": "biogpt.corpus.shards",
    "fairseq_layout": "biogpt.checkpoint.fairseq",
    "weights_io": "biogpt.checkpoint.tensors",
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module at its new place (the same module object)."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """The module was executed at its new place already."""


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds `biogpt.<old>` for every old name in `MOVED`."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.partition(".")
        if package != "biogpt" or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(MOVED[name]))


def install() -> None:
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
