"""Where monitoring keeps its files in the store: one folder per checked window, the trend, the drift-event ledger."""
from __future__ import annotations

from datetime import datetime, timezone


def model_prefix(model: str) -> str:
    return f"monitoring/{model}"


def window_id(start: datetime, end: datetime) -> str:
    """The id (and folder name) of a checked window, e.g. ``20261123T140000Z-20261123T150000Z``; to the second, as
    scheduled windows end at "now"."""
    return f"{start.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{end.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"


def window_prefix(model: str, window: str) -> str:
    """``monitoring/<model>/<window-id>``: drift.json (written last), summary.md, report.html/json, histograms."""
    return f"{model_prefix(model)}/{window}"


def trend_prefix(model: str) -> str:
    """``monitoring/<model>/trend``: trend.md and trend.png over every checked window."""
    return f"{model_prefix(model)}/trend"


def ledger_key(model: str) -> str:
    """The last drift event emitted for the model (the cooldown reads it)."""
    return f"{model_prefix(model)}/last_drift_event.json"
