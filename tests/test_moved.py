"""Old import paths and methods keep working for one release, each with a DeprecationWarning
that names the new place."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from biogpt import cpu

# Every module that moved, and where it went (written out here, not read from the package).
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

# Names that went elsewhere than the old module's main new place: (module, name now).
SPLIT = {
    "generation": {
        "prefill": ("biogpt.decoding.steps", "prefill"),
        "decode_step": ("biogpt.decoding.steps", "decode_step"),
        "row_stepper": ("biogpt.decoding.steps", "row_stepper"),
        "process_logits": ("biogpt.decoding.logits", "process_logits"),
        "GenerationConfig": ("biogpt.decoding.config", "GenerationConfig"),
    },
    "packing": {
        "pack": ("biogpt.cpu.packing", "prepare"),
        "unpack": ("biogpt.cpu.packing", "release"),
        "is_packed": ("biogpt.cpu.packing", "is_prepared"),
        "can_pack": ("biogpt.cpu.packing", "can_prepare"),
        "GemvLinear": ("biogpt.cpu.layers", "GemvLinear"),
        "Int8Linear": ("biogpt.cpu.layers", "Int8Linear"),
    },
    "train": {"SCHEDULES": ("biogpt.training.config", "SCHEDULES")},
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_is_the_new_module_with_a_warning(old: str) -> None:
    if old == "_cpu":
        pytest.importorskip("biogpt.cpu._cpu")
    sys.modules.pop(f"biogpt.{old}", None)
    with pytest.warns(DeprecationWarning, match=MOVED[old].replace(".", r"\.")):
        module = importlib.import_module(f"biogpt.{old}")
    new = importlib.import_module(MOVED[old])
    if old in SPLIT:  # a module of its own that holds the new one's names and the split ones
        for name, value in vars(new).items():
            if not name.startswith("__"):
                assert getattr(module, name) is value, name
        for name, (where, now) in SPLIT[old].items():
            assert getattr(module, name) is getattr(importlib.import_module(where), now), name
    else:
        assert module is new


def test_names_import_from_an_old_path() -> None:
    sys.modules.pop("biogpt.generation", None)
    with pytest.warns(DeprecationWarning):
        from biogpt.generation import GenerationConfig, generate
    from biogpt.decoding import GenerationConfig as config_now
    from biogpt.decoding import generate as generate_now

    assert GenerationConfig is config_now and generate is generate_now


def test_the_classifiers_keep_the_deprecated_methods_too() -> None:
    from biogpt import BioGPTForSequenceClassification, ModelConfig

    model = BioGPTForSequenceClassification(ModelConfig.from_name("tiny")).eval()
    with pytest.warns(DeprecationWarning):
        model.pack()
    with pytest.warns(DeprecationWarning):
        model.unpack()
    assert not cpu.is_prepared(model)


def test_pack_and_unpack_methods_warn_and_call_the_engine(lively_model) -> None:
    model = lively_model(0)
    with pytest.warns(DeprecationWarning, match=r"biogpt\.cpu\.prepare"):
        packed = model.pack()
    assert packed == cpu.is_prepared(model) == cpu.can_prepare(lively_model(0))
    with pytest.warns(DeprecationWarning, match=r"biogpt\.cpu\.release"):
        model.unpack()
    assert not cpu.is_prepared(model)
    assert isinstance(model.biogpt.layers[0].fc1, torch.nn.Linear)
