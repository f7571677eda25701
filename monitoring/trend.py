"""Drift over time: per-signal PSI across the past windows' drift.json files of a model, as a table and a PNG."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from llmops.infra.store import ArtifactStore, StoreError
from llmops.monitoring import layout
from llmops.monitoring.records import DriftReport, Trend, TrendPoint
from llmops.monitoring.signals import SIGNALS


def trend(store: ArtifactStore, model: str, out_dir: Optional[Path] = None, *, last: Optional[int] = None) -> Trend:
    """Collect ``monitoring/<model>/*/drift.json`` into a PSI-over-windows table.

    Args:
        store: The artifact store.
        model: Model name (the folder under ``monitoring/``).
        out_dir: When given, write trend.md and trend.png there.
        last: Keep only the most recent ``last`` windows.
    """
    points, unreadable = [], []
    for key in store.list(layout.model_prefix(model)):
        if not key.endswith("/drift.json"):
            continue
        try:
            report = DriftReport.model_validate_json(store.get_bytes(key))
        except (ValidationError, StoreError, ValueError):
            unreadable.append(key)
            continue
        points.append(TrendPoint(window_id=report.window_id, created_at=report.created_at, end=report.end,
                                 verdict=report.verdict, n_samples=report.n_samples,
                                 psi={n: r.psi for n, r in report.signals.items()}))
    points.sort(key=lambda p: (p.end or p.created_at, p.created_at))
    points = points[-last:] if last else points
    seen = {n for p in points for n in p.psi}
    result = Trend(model=model, points=points, signals=[n for n in SIGNALS if n in seen], unreadable=unreadable)
    if out_dir is not None:
        result = result.model_copy(update={"files": _write(result, Path(out_dir))})
    return result


def render_trend(result: Trend) -> str:
    """Markdown table: one row per window, one PSI column per signal ('-' where not tested)."""
    header = ["window", "verdict", "n", *result.signals]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in result.points:
        cells = [f"{p.psi[n]:.3f}" if n in p.psi else "-" for n in result.signals]
        lines.append("| " + " | ".join([p.window_id, p.verdict, str(p.n_samples), *cells]) + " |")
    return f"# PSI per signal over windows: `{result.model}`\n\n" + "\n".join(lines) + "\n"


def _write(result: Trend, out_dir: Path) -> dict[str, str]:
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "trend.md").write_text(render_trend(result), encoding="utf-8")
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    x = list(range(len(result.points)))
    for name in result.signals:
        ax.plot(x, [p.psi.get(name, math.nan) for p in result.points], marker="o", label=name)
    ax.set_xticks(x, [p.window_id for p in result.points], rotation=60, fontsize=7, ha="right")
    ax.set_ylabel("PSI")
    ax.set_title(f"{result.model}: PSI per signal")
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(out_dir / "trend.png", dpi=90)
    return {"table": "trend.md", "plot": "trend.png"}
