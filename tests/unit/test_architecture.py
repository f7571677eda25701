"""The shape of the package, checked from its source with the standard library's ``ast``: no import cycles, no
module imported by a name outside the one installed package, modules and orchestration functions kept small."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
FOLDERS = ("flows", "tasks", "models", "monitoring", "infra")


def package_modules() -> dict[str, Path]:
    """``llmops.<folder>.<...>`` -> source file, for every module the package installs."""
    modules = {"llmops": ROOT / "__init__.py"}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(("llmops", *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return modules


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports, anywhere in it (deferred imports inside functions included).

    ``from a.b import c`` imports ``a.b.c`` when that is a module, else the names of ``a.b``.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in known:
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_package_is_part_of_an_import_cycle():
    modules = package_modules()
    graph = {name: imported_modules(path, set(modules)) - {name} for name, path in modules.items()}
    assert cycles(graph) == []


@pytest.mark.parametrize("folder", [*FOLDERS, "tests", "bench"])
def test_code_imports_the_package_only_as_llmops(folder):
    """A bare ``import models`` would load a second copy from the working directory, or fail once installed."""
    bare = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            bare += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert bare == []


def test_models_holds_subpackages_not_modules():
    assert sorted(p.name for p in (ROOT / "models").glob("*.py")) == ["__init__.py", "records.py"]


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in package_modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}


@pytest.mark.parametrize("folder", ["tasks", "flows"])
def test_task_and_flow_functions_stay_wiring_sized(folder):
    """Tasks and flows wire stages together (DESIGN.md): at most 40 lines a function, decisions live below."""
    long = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 40:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert long == []


@pytest.mark.parametrize("folder", ["tasks", "flows"])
def test_tasks_and_flows_use_the_public_surface_of_models(folder):
    """They import ``llmops.models.<subpackage>`` (its ``__init__``) or ``llmops.models.records``, never a module
    inside a subpackage: what a stage exports is its ``__init__``, the rest may move."""
    modules = package_modules()
    deep = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            module = node.module if isinstance(node, ast.ImportFrom) and node.level == 0 else None
            if module and module.startswith("llmops.models.") and module.count(".") > 2 and module in modules:
                deep.append(f"{path.relative_to(ROOT)}:{node.lineno} {module}")
    assert deep == []


def test_every_name_the_benchmarks_import_from_the_package_exists():
    """bench/ runs outside the suite: a name that moved would only show when someone runs a benchmark."""
    missing = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("llmops"):
                module = importlib.import_module(node.module)
                missing += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name)
                            and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
    assert missing == []
