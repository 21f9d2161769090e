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


# Names an old module held that now live in another module than its main one, or under
# another name: old name -> "module:new name".
SPLIT = {
    "generation": {
        name: f"biogpt.decoding.{module}:{name}"
        for module, names in {
            "steps": ("prefill", "decode_step", "row_stepper"),
            "logits": ("process_logits", "sampling_filter"),
            "config": ("GenerationConfig",),
            "output": ("GenerationOutput", "StopCriterion", "TokenCallback"),
        }.items()
        for name in names
    },
    "packing": {
        "pack": "biogpt.cpu.packing:prepare",
        "unpack": "biogpt.cpu.packing:release",
        "can_pack": "biogpt.cpu.packing:can_prepare",
        "is_packed": "biogpt.cpu.packing:is_prepared",
        **{
            name: f"biogpt.cpu.layers:{name}"
            for name in (
                "PackedLinear",
                "HalfLinear",
                "GemvLinear",
                "Int8Linear",
                "PackedQKV",
                "HalfQKV",
                "GemvQKV",
                "Int8QKV",
                "Scratch",
                "HALF_DTYPES",
                "PACKABLE_DTYPES",
            )
        },
    },
    "train": {
        name: f"biogpt.training.config:{name}"
        for name in ("SCHEDULES", "TrainConfig", "TrainResult", "learning_rate")
    },
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module at its new place (the same module object), or, where
    the old module's names went to several places (`SPLIT`), as a module that finds each."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new)
        split = SPLIT.get(spec.name.removeprefix("biogpt."))
        if split is None:
            return module
        combined = ModuleType(spec.name, module.__doc__)
        combined.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
        for old, place in split.items():
            where, _, name = place.partition(":")
            combined.__dict__[old] = getattr(importlib.import_module(where), name)
        return combined

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
