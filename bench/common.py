"""Helpers shared by the bench/ scripts: run metadata, timing, peak memory, the benchmark corpus, result files."""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional

from llmops.infra.markdown import markdown_table  # noqa: F401  (the scripts import it from here)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"  # CI has it; a user's machine may not


def run_meta(**extra: Any) -> dict[str, Any]:
    """When, how (the exact command) and where a benchmark ran; ``extra`` adds tool versions and settings."""
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
    }
    meta.update(extra)
    return meta


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """The 1/5/15-minute load averages: other work on a shared machine shows here."""
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def max_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its wall-clock seconds."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def bench_corpus(target_bytes: Optional[int] = None, chunk_chars: int = 2000) -> tuple[list[str], dict[str, Any]]:
    """Documents for benchmarks: stdlib docstrings plus Tiny Shakespeare when present, repeated up to ``target_bytes``.

    Shakespeare is cut into records exactly as ingest cuts a .txt file. Returns the documents
    and a description of where they came from (sizes before repetition, copies).
    The first ``unique_docs`` documents are one copy of the unique text.
    """
    from llmops.models.data.corpus import stdlib_docstrings
    from llmops.models.data.formats import text_records

    unique = [d.text for d in stdlib_docstrings()]
    sources = {"stdlib_docstrings": len(unique)}
    if SHAKESPEARE.is_file():
        plays = [c.text for c in text_records(SHAKESPEARE.read_bytes(), chunk_chars, str(SHAKESPEARE)) if c.text]
        unique += plays
        sources["tinyshakespeare"] = len(plays)
    unique_bytes = sum(len(t.encode("utf-8")) for t in unique)
    docs, size = [], 0
    target = target_bytes or unique_bytes
    while size < target:  # whole copies, then the head of one more, until the target is reached
        for text in unique:
            docs.append(text)
            size += len(text.encode("utf-8"))
            if size >= target:
                break
    info = {"sources_docs": sources, "unique_docs": len(unique), "unique_mb": unique_bytes / 1e6,
            "copies": round(size / unique_bytes, 2), "docs": len(docs), "mb": size / 1e6}
    return docs, info


def write_results(name: str, payload: dict[str, Any], md: str, out_dir: Path = RESULTS) -> Path:
    """Write ``<out_dir>/<name>.json`` and ``<name>.md``; returns the json path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / f"{name}.md").write_text(md, encoding="utf-8")
    return path
