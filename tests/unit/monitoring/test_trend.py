"""Trend: PSI per signal over the drift.json files of past windows."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from llmops.infra.config import MonitorConfig
from llmops.infra.store import LocalStore
from llmops.monitoring.check import check_window
from llmops.monitoring.profile import build_profile
from llmops.monitoring.synthetic import TrafficShape, synthetic_records, toy_tokenize
from llmops.monitoring.trend import render_trend, trend

T0 = datetime(2026, 11, 23, 14, tzinfo=timezone.utc)


def test_trend_collects_psi_per_signal_over_windows(tmp_path):
    cfg = MonitorConfig(evidently_report=False)
    store = LocalStore(tmp_path / "store")
    profile = build_profile(synthetic_records(500, seed=1), toy_tokenize, cfg, model_name="lm", model_version=1)
    for i, words in enumerate([20, 26, 34]):  # prompts get longer window after window
        start = T0 + timedelta(hours=i)
        out = tmp_path / f"w{i}"
        check_window(profile, synthetic_records(300, TrafficShape(words_mean=words), seed=10 + i), toy_tokenize, cfg,
                     out, start=start, end=start + timedelta(hours=1))
        store.upload_dir(out, f"monitoring/lm/{out.name}")
    store.put_text("monitoring/lm/broken/drift.json", "{}")

    result = trend(store, "lm", tmp_path / "trend")
    assert [p.window_id for p in result.points] == [
        "20261123T140000Z-20261123T150000Z", "20261123T150000Z-20261123T160000Z", "20261123T160000Z-20261123T170000Z"]
    chars = [p.psi["prompt_chars"] for p in result.points]
    assert chars == sorted(chars) and chars[-1] > 0.2
    assert result.points[-1].verdict == "alert" and result.unreadable == ["monitoring/lm/broken/drift.json"]
    assert result.signals[0] == "prompt_chars" and "token_frequency" in result.signals
    assert (tmp_path / "trend" / "trend.png").stat().st_size > 1000
    table = (tmp_path / "trend" / "trend.md").read_text()
    assert table == render_trend(result) and "| window | verdict | n | prompt_chars |" in table
    assert trend(store, "lm", last=1).points == result.points[-1:]
    assert trend(store, "other").points == []
