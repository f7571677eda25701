"""Built-in corpora every Python install has: stdlib docstrings and stdlib code, parsed with ast, cached as JSONL."""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import sys
import sysconfig
import textwrap
import tokenize
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

from llmops.infra.settings import get_settings

logger = logging.getLogger("llmops.ingest")

Kind = Literal["docstrings", "code"]
# Bump when the extraction changes, so stale caches are not reused.
_FORMAT = 1
_EXCLUDED_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "tkinter",
    "turtledemo", "ensurepip", "__pycache__",
})
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# Full corpora already read in this process, by cache file.
_MEMO: dict[Path, list[Doc]] = {}


@dataclass(frozen=True)
class Doc:
    """One text of a built-in corpus and where it comes from (module file, 1-based line)."""

    text: str
    path: str
    line: int


def stdlib_docstrings(max_bytes: Optional[int] = None, *, cache_dir: Optional[Path] = None) -> list[Doc]:
    """Module, class and function docstrings of the standard library, cleaned, in source order.

    Args:
        max_bytes: Stop once the texts total this many UTF-8 bytes (the last may cross it); None: all.
        cache_dir: Where the extracted corpus is cached; default: ``<LLMOPS_CACHE_DIR>/corpus``.
    """
    return _corpus("docstrings", max_bytes, cache_dir)


def stdlib_code(max_bytes: Optional[int] = None, *, cache_dir: Optional[Path] = None) -> list[Doc]:
    """Source of stdlib functions, methods and method-less classes with every docstring removed.

    Each text appears once: a class with methods contributes its methods, not itself.
    Arguments as for :func:`stdlib_docstrings`.
    """
    return _corpus("code", max_bytes, cache_dir)


BUILTIN_CORPORA: dict[str, Callable[..., list[Doc]]] = {
    "stdlib-docstrings": stdlib_docstrings,
    "stdlib-code": stdlib_code,
}


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _cache_path(kind: Kind, cache_dir: Optional[Path]) -> Path:
    if cache_dir is None:
        cache_dir = get_settings().cache_dir / "corpus"
    # The stdlib location is part of the key so two interpreters of one version never share a cache.
    where = hashlib.sha256(str(_stdlib_dir()).encode()).hexdigest()[:8]
    version = "{}.{}.{}".format(*sys.version_info[:3])
    return Path(cache_dir) / f"stdlib-{kind}-py{version}-{where}-v{_FORMAT}.jsonl"


def _corpus(kind: Kind, max_bytes: Optional[int], cache_dir: Optional[Path]) -> list[Doc]:
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    path = _cache_path(kind, cache_dir)
    docs = _MEMO.get(path)
    if docs is None and path.is_file():
        docs = _read_cache(path)
        if docs is not None:
            _MEMO[path] = docs
    if docs is not None:
        return _take(docs, max_bytes)[0]
    docs, exhausted = _take(_iter_stdlib(kind), max_bytes)
    if exhausted:  # only a complete corpus is worth caching
        _write_cache(path, docs)
        _MEMO[path] = docs
    return docs


def _take(docs: Iterable[Doc], max_bytes: Optional[int]) -> tuple[list[Doc], bool]:
    """Docs until their UTF-8 size reaches ``max_bytes``; also whether the input ran out first."""
    taken, size = [], 0
    for doc in docs:
        if max_bytes is not None and size >= max_bytes:
            return taken, False
        taken.append(doc)
        size += len(doc.text.encode("utf-8"))
    return taken, True


def _read_cache(path: Path) -> Optional[list[Doc]]:
    try:
        with path.open(encoding="utf-8") as f:
            return [Doc(**json.loads(line)) for line in f]
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("ignoring unreadable corpus cache %s (%s); extracting again", path, exc)
        return None


def _write_cache(path: Path, docs: list[Doc]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(asdict(doc), ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # readers never see half a cache
    logger.info("cached %d stdlib texts at %s", len(docs), path)


def _stdlib_files() -> list[Path]:
    root = _stdlib_dir()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _EXCLUDED_DIRS]
        found += [Path(folder, name) for name in files if name.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _iter_stdlib(kind: Kind) -> Iterator[Doc]:
    extract = _docstrings if kind == "docstrings" else _code
    for path in _stdlib_files():
        try:
            with tokenize.open(path) as f:  # honours PEP 263 coding cookies
                source = f.read()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in old modules
                tree = ast.parse(source, filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError) as exc:
            logger.debug("skipping %s: %s", path, exc)
            continue
        yield from extract(tree, source, str(path))


def _docstrings(tree: ast.Module, source: str, path: str) -> Iterator[Doc]:
    nodes = [tree] + sorted((n for n in ast.walk(tree) if isinstance(n, _DEFS)), key=lambda n: n.lineno)
    for node in nodes:
        text = ast.get_docstring(node, clean=True)
        if text and text.strip():
            yield Doc(text=text, path=path, line=node.body[0].lineno)


def _code(tree: ast.Module, source: str, path: str) -> Iterator[Doc]:
    lines = source.split("\n")
    for node in sorted(_code_nodes(tree), key=lambda n: n.lineno):
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        text = _without_docstrings(node, lines, first).strip()
        if text:
            yield Doc(text=text, path=path, line=first)


def _code_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Functions and methods (with whatever they nest), and classes that define no methods."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _FUNCS):
            yield child
        elif isinstance(child, ast.ClassDef) and not any(isinstance(n, _FUNCS) for n in child.body):
            yield child
        elif not isinstance(child, ast.expr):  # definitions live in statements, not expressions
            yield from _code_nodes(child)


def _without_docstrings(node: ast.AST, lines: list[str], first: int) -> str:
    kept: dict[int, str] = {i: lines[i] for i in range(first - 1, node.end_lineno)}
    for sub in ast.walk(node):
        if not (isinstance(sub, _DEFS) and sub.body and ast.get_docstring(sub, clean=False) is not None):
            continue
        doc = sub.body[0]
        start, end = doc.lineno - 1, doc.end_lineno - 1
        prefix = _bytes_cut(lines[start], doc.col_offset)[0]
        suffix = _bytes_cut(lines[end], doc.end_col_offset)[1]
        for i in range(start, end + 1):
            kept.pop(i, None)
        # A docstring sharing its line with code, or a body that is only a docstring, becomes `...`
        # so the text stays valid Python.
        if prefix.strip() or len(sub.body) == 1:
            kept[start] = prefix + "..." + suffix
    return textwrap.dedent("\n".join(kept[i] for i in sorted(kept)))


def _bytes_cut(line: str, byte_col: int) -> tuple[str, str]:
    # ast offsets count UTF-8 bytes, not characters.
    raw = line.encode("utf-8")
    return raw[:byte_col].decode("utf-8", "replace"), raw[byte_col:].decode("utf-8", "replace")
