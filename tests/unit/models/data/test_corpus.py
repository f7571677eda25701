"""Built-in corpora: extraction rules on a small fake stdlib, caching, and a quick look at the real one."""
from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import pytest

from llmops.models.data import corpus
from llmops.models.data.corpus import Doc, stdlib_code, stdlib_docstrings

MODULE_A = '''\
"""Module a: tools for testing."""

import os


class Widget:
    """A widget holds things."""

    size = 3

    @property
    def area(self):
        """Return the area."""
        return self.size * self.size

    def empty(self):
        """Only a docstring."""


class Failure(Exception): "One-line class docstring."


def helper(x):
    # a comment that stays
    return x + 1
'''

MODULE_B = '''\
def caf\u00e9(n):
    """Caf\u00e9 r\u00e9sum\u00e9 docstring."""
    if n:
        return "\u00e9t\u00e9"
    return None
'''


@pytest.fixture(autouse=True)
def _fresh_memo():
    corpus._MEMO.clear()
    yield
    corpus._MEMO.clear()


@pytest.fixture
def fake_stdlib(tmp_path, monkeypatch) -> Path:
    """A tiny standard library: two real modules, a syntax error, and folders that must be skipped."""
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "a.py").write_text(MODULE_A)
    (root / "pkg" / "b.py").write_text(MODULE_B, encoding="utf-8")
    (root / "broken.py").write_text("def oops(:\n")
    for skipped in ("test", "tests", "site-packages", "idlelib", "lib2to3", "tkinter", "turtledemo",
                    "ensurepip", "__pycache__", "pkg/test"):
        (root / skipped).mkdir(parents=True, exist_ok=True)
        (root / skipped / "skipme.py").write_text('"""Must never be read."""\n')
    monkeypatch.setattr(corpus, "_stdlib_dir", lambda: root)
    return root


def test_docstrings_are_cleaned_in_source_order_and_skip_excluded_folders(fake_stdlib, tmp_path):
    docs = stdlib_docstrings(cache_dir=tmp_path / "cache")
    assert [(Path(d.path).relative_to(fake_stdlib).as_posix(), d.line, d.text) for d in docs] == [
        ("a.py", 1, "Module a: tools for testing."),
        ("a.py", 7, "A widget holds things."),
        ("a.py", 13, "Return the area."),
        ("a.py", 17, "Only a docstring."),
        ("a.py", 20, "One-line class docstring."),
        ("pkg/b.py", 2, "Caf\u00e9 r\u00e9sum\u00e9 docstring."),
    ]


def test_code_has_no_docstrings_one_text_per_definition(fake_stdlib, tmp_path):
    docs = stdlib_code(cache_dir=tmp_path / "cache")
    by_line = {(Path(d.path).name, d.line): d.text for d in docs}
    assert sorted(by_line) == [("a.py", 11), ("a.py", 16), ("a.py", 20), ("a.py", 23), ("b.py", 1)]
    assert by_line[("a.py", 11)] == "@property\ndef area(self):\n    return self.size * self.size"
    assert by_line[("a.py", 16)] == "def empty(self):\n    ..."  # body was only a docstring
    assert by_line[("a.py", 20)] == "class Failure(Exception): ..."
    assert by_line[("a.py", 23)] == "def helper(x):\n    # a comment that stays\n    return x + 1"
    assert '"""' not in by_line[("b.py", 1)] and "\u00e9t\u00e9" in by_line[("b.py", 1)]
    for text in by_line.values():
        ast.parse(text)  # what is left is still Python


def test_cache_is_written_once_and_reused_across_calls_and_processes(fake_stdlib, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = stdlib_docstrings(cache_dir=cache)
    files = list(cache.glob("*.jsonl"))
    assert len(files) == 1 and "docstrings" in files[0].name and "py3." in files[0].name

    def no_parsing(kind):
        raise AssertionError("the stdlib was parsed again")

    monkeypatch.setattr(corpus, "_iter_stdlib", no_parsing)
    assert stdlib_docstrings(cache_dir=cache) == first  # in-process memo
    corpus._MEMO.clear()
    assert stdlib_docstrings(cache_dir=cache) == first  # the JSONL cache, as a new process sees it
    assert stdlib_docstrings(1, cache_dir=cache) == first[:1]


def test_max_bytes_takes_a_prefix_and_a_partial_read_is_not_cached(fake_stdlib, tmp_path):
    cache = tmp_path / "cache"
    partial = stdlib_docstrings(40, cache_dir=cache)
    assert [d.text for d in partial] == ["Module a: tools for testing.", "A widget holds things."]
    assert not list(cache.glob("*.jsonl"))
    full = stdlib_docstrings(cache_dir=cache)
    assert stdlib_docstrings(40, cache_dir=cache) == partial == full[:2]
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        stdlib_docstrings(0, cache_dir=cache)


def test_a_corrupt_cache_is_rebuilt(fake_stdlib, tmp_path):
    cache = tmp_path / "cache"
    expected = stdlib_code(cache_dir=cache)
    (path,) = cache.glob("*.jsonl")
    path.write_text("{not json\n")
    corpus._MEMO.clear()
    assert stdlib_code(cache_dir=cache) == expected


def test_real_stdlib_docstrings_and_code_look_different(tmp_path):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docstrings = stdlib_docstrings(30_000, cache_dir=tmp_path)
    code = stdlib_code(30_000, cache_dir=tmp_path)
    for docs in (docstrings, code):
        sizes = [len(d.text.encode()) for d in docs]
        assert sum(sizes[:-1]) < 30_000 <= sum(sizes)  # stops at the first doc that reaches max_bytes
        assert all(Path(d.path).is_relative_to(stdlib) and d.line >= 1 for d in docs)
        assert not any(part in {"site-packages", "test", "tests"} for d in docs for part in Path(d.path).parts)

    def looks_like_code(doc: Doc) -> bool:
        return doc.text.startswith(("def ", "async def ", "class ", "@"))

    assert all(looks_like_code(d) for d in code)
    assert sum(looks_like_code(d) for d in docstrings) < len(docstrings) / 10
