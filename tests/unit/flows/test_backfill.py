"""``llmops monitor --backfill``: stored traffic replayed window by window, one drift.json each, then the trend."""
from __future__ import annotations

import contextlib
import io
from datetime import datetime, timedelta, timezone

import pytest

from llmops.flows.offline_monitor import backfill
from llmops.infra.config import PipelineConfig
from llmops.infra.store import open_store
from llmops.infra.traffic.log import write_records
from llmops.monitoring.check import load_report
from llmops.monitoring.profile import build_profile
from llmops.monitoring.synthetic import TrafficShape, synthetic_records
from tests.helpers import make_registered_model, tiny_tokenizer

NAME = "backfilled"
T0 = datetime(2026, 11, 23, 13, 50, tzinfo=timezone.utc)  # windows straddle an hour boundary
STEP = timedelta(minutes=10)
DRIFTED = TrafficShape(words_mean=60, vocab_offset=200, surprisal_mean=6.0, length_stop_share=0.1)
# quiet, quiet, drifted, (no traffic), drifted
SHAPES = [TrafficShape(), TrafficShape(), DRIFTED, None, DRIFTED]


def tokenize(texts):
    return tiny_tokenizer()(list(texts), add_special_tokens=False)["input_ids"]


@pytest.fixture
def config() -> PipelineConfig:
    """A production model whose reference is normal synthetic traffic, and five 10-minute windows of traffic."""
    config = PipelineConfig(model_name=NAME).with_overrides(
        ["monitor.window_minutes=10", "monitor.min_samples=50", "monitor.evidently_report=false"])
    store = open_store()
    profile = build_profile(synthetic_records(400, seed=1, model=NAME), tokenize, config.monitor,
                            model_name=NAME, model_version=1)
    make_registered_model(store, NAME, files={"reference_profile.json": profile.to_json()})
    for i, shape in enumerate(SHAPES):
        if shape is not None:  # 120 records 4 s apart: 8 of the 10 minutes
            write_records(store, NAME, synthetic_records(120, shape, seed=10 + i, start=T0 + i * STEP, spacing_s=4,
                                                         model=NAME))
    return config


def run(config: PipelineConfig, **kwargs) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = backfill(config, **kwargs)
    return status, buffer.getvalue()


def window_ids(n: int, first: datetime = T0) -> list[str]:
    return [f"{first + i * STEP:%Y%m%dT%H%M%SZ}-{first + (i + 1) * STEP:%Y%m%dT%H%M%SZ}" for i in range(n)]


def test_backfill_writes_one_drift_json_per_window_with_verdicts_in_order_and_the_trend(config, tmp_path):
    status, out = run(config, out=tmp_path / "trend", start=T0.isoformat(), end=(T0 + 5 * STEP).isoformat())
    assert status == 0
    store = open_store()
    reports = [load_report(store.get_bytes(f"monitoring/{NAME}/{w}/drift.json")) for w in window_ids(5)]
    assert [r.n_samples for r in reports] == [120, 120, 120, 0, 120]
    verdicts = [r.verdict for r in reports]
    assert verdicts[0] in ("ok", "warn") and verdicts[1] in ("ok", "warn"), verdicts
    assert verdicts[2:] == ["alert", "insufficient_data", "alert"]
    assert {"prompt_tokens", "prompt_surprisal"} <= set(reports[2].alerting)
    assert [(r.start, r.end) for r in reports] == [(T0 + i * STEP, T0 + (i + 1) * STEP) for i in range(5)]
    for window, report in zip(window_ids(5), reports):
        assert f"{window}: {report.verdict} ({report.n_samples} records)" in out

    table = (tmp_path / "trend" / "trend.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 2026")]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == window_ids(5), "oldest window first"
    assert [row.split(" | ")[1] for row in rows] == verdicts
    assert (tmp_path / "trend" / "trend.png").stat().st_size > 1000
    assert "trend: " in out


def test_backfill_without_start_begins_at_the_oldest_traffic_hour(config):
    end = T0 + 5 * STEP
    status, out = run(config, end=end.isoformat())
    assert status == 0
    hour = T0.replace(minute=0)  # the oldest partition is 13:00: five empty windows before the first traffic
    expected = window_ids(10, first=hour)
    store = open_store()
    written = sorted(k.split("/")[2] for k in store.list(f"monitoring/{NAME}") if k.endswith("/drift.json"))
    assert written == expected
    reports = {w: load_report(store.get_bytes(f"monitoring/{NAME}/{w}/drift.json")) for w in expected}
    assert [reports[w].n_samples for w in expected] == [0] * 5 + [120, 120, 120, 0, 120]
    assert [reports[w].verdict for w in expected[:5]] == ["insufficient_data"] * 5
    assert reports[expected[7]].verdict == "alert"



def test_backfill_skips_windows_without_traffic_files(config):
    hourly = config.with_overrides(["monitor.window_minutes=60"])
    status, out = run(hourly, start=T0.isoformat(), end=(T0 + timedelta(hours=4)).isoformat())
    assert status == 0
    first, second, third, fourth = (f"{T0 + timedelta(hours=h):%Y%m%dT%H%M%SZ}-"
                                    f"{T0 + timedelta(hours=h + 1):%Y%m%dT%H%M%SZ}"
                                    for h in range(4))
    written = sorted(k.split("/")[2] for k in open_store().list(f"monitoring/{NAME}") if k.endswith("/drift.json"))
    # a window reads its hours and the one before (a file is named by the hour of its first record): the second
    # and third windows hold no record but touch hours with files, so they are judged; the fourth touches none
    assert written == [first, second, third]
    assert f"{third}: insufficient_data (0 records)" in out and f"{fourth}: no traffic files, not checked" in out


def test_backfill_with_no_traffic_says_so(tmp_path):
    status, out = run(PipelineConfig(model_name="silent"), out=tmp_path / "trend")
    assert status == 0 and out.startswith("no stored traffic for silent in ")
    assert not (tmp_path / "trend").exists()
