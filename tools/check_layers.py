#!/usr/bin/env python3
"""Imports flow one way through the package, with no circle; tests use no private names.

    python tools/check_layers.py [PACKAGE_DIR] [--tests DIR | --no-tests]

PACKAGE_DIR (default: biogpt/ beside this tools/ folder) is parsed with `ast`, nothing is
imported. Every import of one of its modules counts: at module level, inside functions (a lazy
import against the flow is still a circle, only a later one) and under `if TYPE_CHECKING:`.
`from pkg import name` is an import of the submodule `pkg.name` where there is one, else of
`pkg` itself. Reported, one line each:

- an import from a lower layer of LAYERS into a higher one;
- an import that FORBIDDEN rules out whatever the layers say (the model knows no engine);
- every import circle among modules, within a layer too (imports under `if TYPE_CHECKING:`
  are left out of circles: they never run);
- a module that is in no layer, and an import of a module the package does not have.

The tests folder (default: tests/ beside PACKAGE_DIR) is checked for private names of the
package: `from pkg.mod import _name`, a private module (`pkg.cpu._cpu`), `mod._name` on an
imported module of the package, and `setattr(mod, "_name", ...)`, `monkeypatch.setattr`,
`mock.patch("pkg.mod._name")` and the like. Dunder names are public.

Exit status 1 with one line per finding, else 0 with a one-line summary. Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# The layers, lowest first. A module may import from its own layer and the layers below it.
# Names are relative to the package; a name covers a module and, if it is a package,
# everything in it. "__init__" is the package's own __init__.py only.
Layers = Sequence[tuple[str, Sequence[str]]]
LAYERS: Layers = [
    # errors, atomic files, hyper-parameters, the label shift; _moved names modules only in strings
    ("base", ("errors", "io", "config", "labels", "_moved")),
    # text <-> ids; needs only base, and everything that reads text needs it
    ("tokenizer", ("tokenizer",)),
    # the architecture with its key/value cache and dropout: pure torch, no files, no engine
    ("model", ("cache", "dropout", "model")),
    # weights in and out of every layout; builds models, so sits above them
    ("checkpoint", ("checkpoint",)),
    # the CPU inference engine: packs a built model's layers; knows nothing of decoding
    ("cpu", ("cpu",)),
    # generate/complete/score; owns the packing policy, so it may call the engine below it
    ("decoding", ("decoding",)),
    # the public classes: architecture + loading + decoding in one place
    ("api", ("api",)),
    # task formats, prompts, metrics and evaluation, which decodes
    ("tasks", ("tasks",)),
    # fine-tuning (uses tasks), pretraining and its token shards
    ("training", ("training", "corpus")),
    # entry points: each may use anything below, and each other without a circle
    ("apps", ("cli", "serve", "mine", "reproduce", "report")),
    # the package façade re-exports from anywhere; `python -m` runs the command line
    ("facade", ("__init__", "__main__")),
]

# module (as in LAYERS) -> what it must never import, whatever the layers say; with why
Forbidden = dict[str, tuple[tuple[str, ...], str]]
FORBIDDEN: Forbidden = {
    "model": (("cpu", "checkpoint", "decoding"), "the architecture imports nothing of the engine"),
}

STRING_CALLS = {"setattr", "getattr", "delattr", "hasattr", "object"}  # (module, "_name", ...)
PATH_CALLS = {"setattr", "delattr", "patch", "import_module"}  # ("pkg.mod._name", ...)


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    path: Path
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class Package:
    """The modules of a package on disk, by dotted name, and how names resolve among them."""

    def __init__(self, root: Path, layers: Layers = LAYERS) -> None:
        self.root = root
        self.layers = layers
        self.name = root.name
        self.files: dict[str, Path] = {}  # module -> its .py file
        self.packages: set[str] = set()
        self.extensions: set[str] = set()  # compiled modules (foo.c, foo.*.so): no edges of theirs
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
                self.packages.add(".".join(parts))
            self.files[".".join(parts)] = path
        for package in self.packages:
            folder = root.parent.joinpath(*package.split("."))
            for entry in folder.iterdir():
                stem = entry.name.split(".")[0]
                if entry.suffix in (".c", ".so", ".pyd") and stem.isidentifier():
                    name = f"{package}.{stem}"
                    if name not in self.files:
                        self.extensions.add(name)

    def known(self, module: str) -> bool:
        return module in self.files or module in self.extensions

    def ours(self, module: str) -> bool:
        return module == self.name or module.startswith(self.name + ".")

    def relative(self, module: str) -> str:
        """`pkg.tasks.qa` -> `tasks.qa`; the package itself -> `__init__`."""
        return "__init__" if module == self.name else module[len(self.name) + 1 :]

    def layer_of(self, module: str) -> int | None:
        name = self.relative(module)
        for index, (_, members) in enumerate(self.layers):
            for member in members:
                if name == member or (member != "__init__" and name.startswith(member + ".")):
                    return index
        return None

    def absolute(self, source: str, node: ast.ImportFrom) -> str:
        """The module an ImportFrom names, relative imports resolved against `source`."""
        if not node.level:
            return node.module or ""
        base = source.split(".") if source in self.packages else source.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))


def walk_imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement anywhere in the tree, and whether it is under TYPE_CHECKING."""

    def visit(node: ast.AST, type_only: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, type_only
            return
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, True)
            for child in node.orelse:
                yield from visit(child, type_only)
            return
        for inner in ast.iter_child_nodes(node):
            yield from visit(inner, type_only)

    yield from visit(tree, False)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def collect_imports(package: Package) -> list[Import]:
    imports = []
    for source, path in package.files.items():
        for node, type_only in walk_imports(parse(path)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                module = package.absolute(source, node)
                targets = []
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.append(sub if package.known(sub) else module)
            for target in dict.fromkeys(targets):
                if package.ours(target):
                    imports.append(Import(source, target, path, node.lineno, type_only))
    return imports


def shown(path: Path, package: Package) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.relative_to(package.root.parent))


def layer_findings(package: Package, imports: list[Import], forbidden: Forbidden) -> list[str]:
    findings = []
    for module, path in package.files.items():
        if package.layer_of(module) is None:
            findings.append(
                f"{shown(path, package)}:1 {module} is in no layer (add it to LAYERS in "
                "tools/check_layers.py)"
            )
    for imp in imports:
        where = f"{shown(imp.path, package)}:{imp.line} imports {imp.target}"
        if not package.known(imp.target):
            findings.append(f"{where}, which is no module of {package.name}")
            continue
        src, dst = package.layer_of(imp.source), package.layer_of(imp.target)
        if src is None or dst is None:
            continue  # reported above
        banned, why = forbidden.get(package.relative(imp.source), ((), ""))
        target = package.relative(imp.target)
        name, source = package.layers[dst][0], package.layers[src][0]
        if dst > src:
            findings.append(f"{where} ({name}) against the flow from {source}")
        elif any(target == b or target.startswith(b + ".") for b in banned):
            findings.append(f"{where} ({name}), which it must not: {why}")
    return findings


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one node, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def shortest_cycle(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """start -> ... -> start, shortest, inside one component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError("a component without a cycle")


def cycle_findings(package: Package, imports: list[Import]) -> list[str]:
    graph: dict[str, set[str]] = {module: set() for module in package.files}
    first: dict[tuple[str, str], Import] = {}
    for imp in imports:
        if imp.type_only or imp.source == imp.target or imp.target not in package.files:
            continue
        graph[imp.source].add(imp.target)
        first.setdefault((imp.source, imp.target), imp)
    findings = []
    for component in strongly_connected(graph):
        cycle = shortest_cycle(graph, component[0], set(component))
        steps = [first[a, b] for a, b in itertools.pairwise(cycle)]
        where = ", ".join(f"{shown(s.path, package)}:{s.line}" for s in steps)
        line = f"import cycle: {' -> '.join(cycle)} ({where})"
        if len(component) > len(cycle) - 1:
            line += f"; all in one circle: {', '.join(component)}"
        findings.append(line)
    return findings


def test_findings(package: Package, tests: Path) -> list[str]:
    findings = []
    for path in sorted(tests.rglob("*.py")):
        if "__pycache__" not in path.parts:
            findings += private_uses(package, path)
    return findings


def text(expr: ast.expr) -> str | None:
    """The value of a string literal, else None."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value
    return None


def private_part(module: str) -> str | None:
    return next((part for part in module.split(".") if is_private(part)), None)


def private_uses(package: Package, path: Path) -> list[str]:
    """Private names of the package used in one test file, in line order."""
    tree = parse(path)
    modules: dict[str, str] = {}  # local name -> module of the package it is bound to
    found: list[tuple[int, str]] = []

    def report(node: ast.expr | ast.stmt, what: str) -> None:
        found.append((node.lineno, f"{shown(path, package)}:{node.lineno} uses the private {what}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not package.ours(alias.name):
                    continue
                if private_part(alias.name):
                    report(node, f"module {alias.name}")
                if alias.asname:
                    modules[alias.asname] = alias.name
                else:
                    modules[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif (
            isinstance(node, ast.ImportFrom) and not node.level and package.ours(node.module or "")
        ):
            module = node.module or ""
            if private_part(module):
                report(node, f"module {module}")
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if package.known(sub):
                    if is_private(alias.name):
                        report(node, f"module {sub}")
                    modules[alias.asname or alias.name] = sub
                elif is_private(alias.name):
                    report(node, f"name {alias.name} of {module}")

    def module_of(expr: ast.expr) -> str | None:
        """The package module an expression like `a.b.c` stands for, if it is one."""
        if isinstance(expr, ast.Name):
            return modules.get(expr.id)
        if isinstance(expr, ast.Attribute):
            parent = module_of(expr.value)
            if parent and package.known(f"{parent}.{expr.attr}"):
                return f"{parent}.{expr.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = module_of(node.value)
            if owner:
                kind = "module" if package.known(f"{owner}.{node.attr}") else "name"
                report(node, f"{kind} {node.attr} of {owner}")
        elif isinstance(node, ast.Call) and node.args:
            called = node.func.attr if isinstance(node.func, ast.Attribute) else None
            called = node.func.id if isinstance(node.func, ast.Name) else called
            first = node.args[0]
            name = text(node.args[1]) if len(node.args) > 1 else None
            owner = module_of(first)
            if called in STRING_CALLS and owner and name and is_private(name):
                report(node, f"name {name} of {owner}")
            dotted = text(first)
            if called in PATH_CALLS and dotted and package.ours(dotted) and private_part(dotted):
                report(node, f"name {private_part(dotted)} in {dotted!r}")
    return [line for _, line in sorted(found)]


def check(
    root: Path,
    tests: Path | None = None,
    layers: Layers = LAYERS,
    forbidden: Forbidden = FORBIDDEN,
) -> tuple[list[str], str]:
    """(findings, summary) for the package at `root` and, if given, the tests folder."""
    package = Package(root, layers)
    imports = collect_imports(package)
    findings = layer_findings(package, imports, forbidden) + cycle_findings(package, imports)
    summary = (
        f"{package.name}: {len(package.files)} modules in {len(layers)} layers, "
        f"{len(imports)} imports, all with the flow, no import cycle"
    )
    if tests is not None:
        findings += test_findings(package, tests)
        count = sum(1 for p in tests.rglob("*.py") if "__pycache__" not in p.parts)
        summary += f"; no private name of {package.name} in {count} files under {tests.name}/"
    return findings, summary


def main(argv: Sequence[str] | None = None) -> int:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", nargs="?", type=Path, default=here / "biogpt")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--tests", type=Path, help="tests folder (default: tests/ beside it)")
    group.add_argument("--no-tests", action="store_true", help="check the package only")
    args = parser.parse_args(argv)
    root = args.package.resolve()
    if not (root / "__init__.py").is_file():
        parser.error(f"{args.package} is no package (no __init__.py)")
    tests = args.tests
    if tests is None and not args.no_tests and (root.parent / "tests").is_dir():
        tests = root.parent / "tests"
    findings, summary = check(root, tests)
    for line in findings:
        print(line)
    if findings:
        print(f"check_layers: {len(findings)} finding(s)", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
