"""tools/check_layers.py: imports flow one way through biogpt with no circle, and tests use no
private name of the package. The real tree first, then the checker on small packages in tmp_path
(named `pkg`, laid out like biogpt, checked against the real layer table)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "check_layers.py"

_spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
assert _spec is not None and _spec.loader is not None
check_layers = importlib.util.module_from_spec(_spec)
sys.modules["check_layers"] = check_layers  # dataclasses look their module up there
_spec.loader.exec_module(check_layers)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


# A small package that keeps every rule: each layer imports only downwards (lazily too).
_CLEAN = {
    "pkg/__init__.py": """
        from pkg.model import Model
        from pkg.tokenizer import Tokenizer
        __version__ = "1"
    """,
    "pkg/__main__.py": "from pkg.cli import main\n",
    "pkg/errors.py": "class Error(Exception): ...\n",
    "pkg/config.py": """
        from pkg.errors import Error
        def save():
            from pkg.io import write
    """,
    "pkg/io.py": "from pkg.errors import Error\ndef write(): ...\n",
    "pkg/tokenizer/__init__.py": "from pkg.tokenizer.tokenizer import Tokenizer\n",
    "pkg/tokenizer/tokenizer.py": "from pkg.tokenizer import bpe\nclass Tokenizer: ...\n",
    "pkg/tokenizer/bpe.py": "from pkg.errors import Error\n",
    "pkg/cache.py": "from pkg.config import Config\n",
    "pkg/model.py": """
        from typing import TYPE_CHECKING
        from pkg.cache import Cache
        from . import config
        if TYPE_CHECKING:
            from pkg.tokenizer import Tokenizer
        class Model: ...
        def public(): ...
        def _helper(): ...
    """,
    "pkg/checkpoint/__init__.py": "from pkg.checkpoint.pipeline import load\n",
    "pkg/checkpoint/pipeline.py": """
        from pkg import model
        from pkg.tokenizer import Tokenizer
        def load(): ...
    """,
    "pkg/cpu/__init__.py": "from pkg.cpu import gemv\n",
    "pkg/cpu/_ext.c": "/* compiled as pkg.cpu._ext */\n",
    "pkg/cpu/gemv.py": """
        try:
            from pkg.cpu import _ext
        except ImportError:
            _ext = None
    """,
    "pkg/cpu/packing.py": """
        from pkg.cpu import gemv
        from pkg.model import Model
        _FLAG = True
    """,
    "pkg/decoding/__init__.py": "from pkg.decoding.search import generate\n",
    "pkg/decoding/search.py": """
        from ..cpu import packing
        from pkg.model import Model
        def generate(): ...
    """,
    "pkg/tasks/__init__.py": "from pkg.tasks.qa import QA\n",
    "pkg/tasks/qa.py": """
        from pkg.tasks import metrics
        def run():
            from pkg.decoding import generate
    """,
    "pkg/tasks/metrics.py": "\n",
    "pkg/training/loop.py": "from pkg.tasks import QA\nfrom pkg.corpus import shards\n",
    "pkg/corpus/__init__.py": "\n",
    "pkg/corpus/shards.py": "from pkg.tokenizer import Tokenizer\n",
    "pkg/cli/__init__.py": """
        def main():
            from pkg.training import loop
            from pkg.serve import app
    """,
    "pkg/serve/app.py": "from pkg.checkpoint import load\n",
    "tests/test_ok.py": """
        import pkg
        import pkg.cpu.packing
        from pkg import __version__
        from pkg.cpu import packing
        from pkg.model import Model, public
        def test(monkeypatch, thing):
            monkeypatch.setattr(packing, "PUBLIC", 1)
            assert packing.__name__ and pkg.cpu.packing.__file__
            thing._private = 1  # no module of the package
            getattr(Model(), "_private", None)  # an object's, not a module's
    """,
}
CLEAN = {name: textwrap.dedent(text).lstrip("\n") for name, text in _CLEAN.items()}


def run_check(tmp_path: Path, changes: dict[str, str] | None = None) -> list[str]:
    """Findings for the clean tree with some files changed or added."""
    write(tmp_path, {**CLEAN, **(changes or {})})
    findings: list[str] = check_layers.check(tmp_path / "pkg", tmp_path / "tests")[0]
    return findings


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # findings name files relative to here


def test_the_package_imports_flow_one_way_without_a_circle() -> None:
    findings, summary = check_layers.check(ROOT / "biogpt")
    assert findings == []
    assert "no import cycle" in summary


def test_the_tests_use_no_private_name_of_the_package() -> None:
    findings, _ = check_layers.check(ROOT / "biogpt", ROOT / "tests")
    assert findings == []


def test_the_script_runs_on_the_real_tree() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-tests"], capture_output=True, text=True, cwd=ROOT
    )
    assert (done.returncode, done.stdout.count("\n")) == (0, 1), done.stdout + done.stderr
    assert done.stdout.startswith("biogpt: ")


def test_a_clean_tree_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_check(tmp_path) == []
    assert check_layers.main([str(tmp_path / "pkg")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "no import cycle" in out and "no private name of pkg" in out


def test_an_upward_import_fails_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = CLEAN["pkg/model.py"] + "from pkg.checkpoint.pipeline import load\n"
    assert run_check(tmp_path, {"pkg/model.py": model}) == [
        "pkg/model.py:9 imports pkg.checkpoint.pipeline (checkpoint) against the flow from model",
        "import cycle: pkg.checkpoint.pipeline -> pkg.model -> pkg.checkpoint.pipeline"
        " (pkg/checkpoint/pipeline.py:1, pkg/model.py:9)",
    ]
    assert check_layers.main([str(tmp_path / "pkg")]) == 1
    assert capsys.readouterr().out.startswith("pkg/model.py:9 imports")


def test_a_lazy_upward_import_fails(tmp_path: Path) -> None:
    packing = CLEAN["pkg/cpu/packing.py"] + "def pack():\n    from pkg.decoding import search\n"
    assert run_check(tmp_path, {"pkg/cpu/packing.py": packing}) == [
        "pkg/cpu/packing.py:5 imports pkg.decoding.search (decoding) against the flow from cpu",
        "import cycle: pkg.cpu.packing -> pkg.decoding.search -> pkg.cpu.packing"
        " (pkg/cpu/packing.py:5, pkg/decoding/search.py:1)",
    ]


def test_an_import_of_the_package_facade_is_upward(tmp_path: Path) -> None:
    findings = run_check(tmp_path, {"pkg/tasks/metrics.py": "from pkg import Model\n"})
    assert findings == ["pkg/tasks/metrics.py:1 imports pkg (facade) against the flow from tasks"]


def test_a_cycle_within_one_layer_fails(tmp_path: Path) -> None:
    findings = run_check(
        tmp_path, {"pkg/tasks/metrics.py": "def f():\n    from pkg.tasks.qa import run\n"}
    )
    assert findings == [
        "import cycle: pkg.tasks.metrics -> pkg.tasks.qa -> pkg.tasks.metrics"
        " (pkg/tasks/metrics.py:2, pkg/tasks/qa.py:1)"
    ]


def test_a_longer_cycle_names_every_module_in_it(tmp_path: Path) -> None:
    (finding,) = run_check(
        tmp_path,
        {
            "pkg/tasks/metrics.py": "from pkg.tasks import score\n",
            "pkg/tasks/score.py": "from pkg.tasks import rules\n",
            "pkg/tasks/rules.py": "from pkg.tasks.qa import run\n",
        },
    )
    assert finding.startswith("import cycle: pkg.tasks.metrics -> pkg.tasks.score ->")
    assert "pkg.tasks.rules -> pkg.tasks.qa -> pkg.tasks.metrics" in finding


def test_type_checking_imports_follow_the_flow_but_close_no_circle(tmp_path: Path) -> None:
    metrics = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.tasks.qa import run\n"
    )
    assert run_check(tmp_path, {"pkg/tasks/metrics.py": metrics}) == []
    config = "import typing\nif typing.TYPE_CHECKING:\n    from pkg.model import Model\n"
    assert run_check(tmp_path, {"pkg/config.py": config}) == [
        "pkg/config.py:3 imports pkg.model (model) against the flow from base"
    ]


def test_from_package_import_submodule_resolves_to_the_submodule(tmp_path: Path) -> None:
    # `from pkg import model` in the clean tree is an import of pkg.model, not of the façade
    assert run_check(tmp_path) == []
    findings = run_check(tmp_path, {"pkg/cache.py": "from pkg.cpu import gemv\n"})
    assert findings == ["pkg/cache.py:1 imports pkg.cpu.gemv (cpu) against the flow from model"]
    findings = run_check(tmp_path, {"pkg/cache.py": "from .cpu import gemv as g, _ext\n"})
    assert findings == [
        "pkg/cache.py:1 imports pkg.cpu.gemv (cpu) against the flow from model",
        "pkg/cache.py:1 imports pkg.cpu._ext (cpu) against the flow from model",
    ]


def test_the_model_imports_no_engine_whatever_the_layers(tmp_path: Path) -> None:
    write(tmp_path, {**CLEAN, "pkg/model.py": "from pkg.cpu import gemv\n"})
    flat = [  # the engine in the model's own layer: still out of the model's reach
        ("all", ("errors", "io", "config", "tokenizer", "cache", "model", "checkpoint", "cpu")),
        ("rest", ("decoding", "tasks", "training", "corpus", "cli", "serve")),
        ("facade", ("__init__", "__main__")),
    ]
    findings, _ = check_layers.check(tmp_path / "pkg", layers=flat)
    assert findings == [
        "pkg/model.py:1 imports pkg.cpu.gemv (all), which it must not:"
        " the architecture imports nothing of the engine"
    ]


def test_a_module_in_no_layer_and_a_missing_module_are_reported(tmp_path: Path) -> None:
    findings = run_check(
        tmp_path, {"pkg/extra.py": "\n", "pkg/training/loop.py": "import pkg.generation\n"}
    )
    assert findings == [
        "pkg/extra.py:1 pkg.extra is in no layer (add it to LAYERS in tools/check_layers.py)",
        "pkg/training/loop.py:1 imports pkg.generation, which is no module of pkg",
    ]


@pytest.mark.parametrize(
    ("test", "finding"),
    [
        ("from pkg.model import public, _helper\n", "name _helper of pkg.model"),
        ("from pkg.cpu import _ext\n", "module pkg.cpu._ext"),
        ("import pkg.cpu._ext as ext\n", "module pkg.cpu._ext"),
        ("from pkg.cpu.packing import _FLAG as flag\n", "name _FLAG of pkg.cpu.packing"),
        ("from pkg.cpu import packing\nassert packing._FLAG\n", "name _FLAG of pkg.cpu.packing"),
        ("from pkg import cpu\nassert cpu.packing._FLAG\n", "name _FLAG of pkg.cpu.packing"),
        ("import pkg.cpu.packing\nassert pkg.cpu.packing._FLAG\n", "name _FLAG of pkg.cpu.packing"),
        ("import pkg.cpu.gemv as g\ng._ext.run()\n", "name _ext of pkg.cpu.gemv"),
        ("import pkg.model as m\nm._helper()\n", "name _helper of pkg.model"),
        (
            "def test(monkeypatch):\n    from pkg.cpu import packing\n"
            "    monkeypatch.setattr(packing, '_FLAG', False)\n",
            "name _FLAG of pkg.cpu.packing",
        ),
        ("from unittest import mock\nmock.patch('pkg.cpu.packing._FLAG')\n", "name _FLAG in"),
    ],
)
def test_a_test_using_a_private_name_fails(tmp_path: Path, test: str, finding: str) -> None:
    (found,) = run_check(tmp_path, {"tests/test_private.py": test})
    assert found.startswith("tests/test_private.py:")
    assert f" uses the private {finding}" in found


def test_dunders_and_private_names_elsewhere_are_fine(tmp_path: Path) -> None:
    test = """
        import os
        from os import _exit
        from pkg import __version__
        from pkg.cpu import packing
        from pkg.model import Model
        assert packing.__doc__ is None and os._exit and Model._private is None
        setattr(os, "_x", 1)
    """
    assert run_check(tmp_path, {"tests/test_fine.py": test}) == []
