"""What ``pip install .`` puts in site-packages: one ``llmops`` package holding every module, its license, and
dependencies declared exactly as the package imports them."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).parents[2]
FOLDERS = ("flows", "tasks", "models", "monitoring", "infra")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def package_dirs() -> set[str]:
    """``llmops.<...>`` of every folder with an __init__.py under the mandated folders."""
    return {".".join(("llmops", *init.parent.relative_to(ROOT).parts))
            for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")}


def test_every_package_on_disk_is_installed_and_nothing_else():
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == {"llmops", *package_dirs()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel ``pip install .`` installs, built from a copy of the source (setuptools writes build/ beside it)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", "LICENSE", "__init__.py"):
        shutil.copy(ROOT / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True)
    (path,) = out.glob("llmops-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_one_top_level_name_holding_every_module(wheel):
    names = wheel.namelist()
    assert {n.split("/")[0] for n in names} == {"llmops", next(n for n in names if ".dist-info/" in n).split("/")[0]}
    modules = {f"llmops/{p.relative_to(ROOT)}" for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")}
    assert modules | {"llmops/__init__.py"} == {n for n in names if n.endswith(".py")}
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "console_scripts" in wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()


def test_llmops_version_prints_the_installed_version():
    from llmops import __version__

    done = subprocess.run([sys.executable, "-m", "llmops.flows.cli", "--version"], capture_output=True, text=True)
    assert (done.returncode == 0
            and done.stdout.strip() == f"llmops {__version__}" == f"llmops {PYPROJECT['project']['version']}")


def _distribution(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def imported_distributions() -> set[str]:
    """Distributions whose modules the package imports (anywhere in a module), the standard library left out."""
    top = set()
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    top |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    top.add(node.module.split(".")[0])
    owners = packages_distributions()
    third_party = top - set(sys.stdlib_module_names) - {"llmops"}
    missing = {name for name in third_party if name not in owners}
    assert not missing, f"imported but installed by no distribution: {missing}"
    return {_distribution(owners[name][0]) for name in third_party}


def test_declared_dependencies_are_exactly_what_the_package_imports():
    declared = {_distribution(r) for r in PYPROJECT["project"]["dependencies"]}
    assert declared == imported_distributions()
