"""The package's layers, checked on the source: lower layers never import higher ones, and no import cycles.

Layers (low to high): optim < data, models < probe, sharpness < runner < labs < cli. Every ``import`` and
``from ... import`` statement counts, also those inside functions (a lazy import is still a dependency).
The runner owns the lab registry (:mod:`sharplab.runner.labs`); labs register themselves, the CLI imports
them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sharplab"

LAYER = {"optim": 0, "data": 1, "models": 1, "probe": 2, "sharpness": 2, "runner": 3, "labs": 4, "cli": 5}
#: shared helpers below every layer (errors, registry, io, allocator, version)
BASE = {"errors", "registry", "io", "progress", "_allocator", "__init__", "__main__"}


def module_name(path: Path, root: Path = SRC.parent) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = SRC.parent) -> set[str]:
    """Absolute names of the sharplab modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {n for n in found if n == "sharplab" or n.startswith("sharplab.")}


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in BASE:
        return -1
    return LAYER.get(parts[1])


def test_every_top_level_package_has_a_layer():
    for path in SRC.iterdir():
        if path.is_dir() and (path / "__init__.py").exists():
            assert path.name in LAYER or path.name in {"studies"}, f"{path.name}: add it to LAYER"


def test_no_module_imports_a_higher_layer():
    modules = all_modules()
    bad = []
    for name, path in modules.items():
        mine = layer_of(name)
        if mine is None or name.split(".")[-1] == "__main__":
            continue
        for dep in imports_of(path):
            theirs = layer_of(dep)
            if theirs is not None and theirs > mine and not (mine == -1 and name == "sharplab"):
                bad.append(f"{name} imports {dep}")
    assert not bad, "layering violations:\n" + "\n".join(sorted(bad))


def test_runner_never_imports_a_lab():
    bad = [f"{name} imports {dep}" for name, path in all_modules().items() if name.startswith("sharplab.runner")
           for dep in imports_of(path) if dep.startswith(("sharplab.labs", "sharplab.cli"))]
    assert not bad, bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules it imports (a package and its own submodules excepted)."""
    return {name: {d for d in imports_of(path) if d in modules and d != name
                   and not d.startswith(name + ".") and not name.startswith(d + ".")}
            for name, path in modules.items()}


def test_no_import_cycles_between_modules():
    modules = all_modules()
    assert _cycles(import_graph(modules)) == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a function-level and a relative import are both found."""
    fake = tmp_path / "sharplab" / "runner" / "probe_module.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from sharplab.labs import digits\n\nfrom ..labs import deep_net\n")
    found = imports_of(fake, tmp_path)
    assert {"sharplab.labs", "sharplab.labs.digits", "sharplab.labs.deep_net"} <= found


REGISTRY_NAMES = {"Lab", "LABS", "register_lab", "get_lab"}


def test_one_lab_registry_with_one_import_path():
    """``get_lab`` / ``register_lab`` are defined once, in :mod:`sharplab.runner.labs`, and every module of
    src and tests imports the registry's names from there (no alias module, no re-export)."""
    defined, imported = [], []
    for path in [*SRC.rglob("*.py"), *(SRC.parents[1] / "tests").rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in REGISTRY_NAMES:
                defined.append(f"{path.name}:{node.name}")
            if isinstance(node, ast.ImportFrom) and node.module != "sharplab.runner.labs":
                imported += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                             if a.name in REGISTRY_NAMES]
    assert sorted(defined) == ["labs.py:Lab", "labs.py:get_lab", "labs.py:register_lab"]
    assert not imported, imported


@pytest.mark.parametrize("graph,expected", [({"a": {"b"}, "b": {"a"}}, [["a", "b"]]), ({"a": {"b"}, "b": set()}, [])])
def test_cycle_finder(graph, expected):
    assert _cycles(graph) == expected
