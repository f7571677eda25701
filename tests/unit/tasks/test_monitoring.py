"""The monitor stage's tasks, called as plain functions (``task.fn``) on a real store."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from prefect.logging import disable_run_logger

from llmops.infra.config import PipelineConfig
from llmops.infra.store import open_store
from llmops.infra.traffic.log import write_records
from llmops.monitoring.synthetic import synthetic_records
from llmops.tasks.monitoring import compact_traffic

T0 = datetime(2025, 3, 4, 14, tzinfo=timezone.utc)  # long closed whatever the clock says


def test_the_compact_traffic_task_compacts_closed_hours_within_its_lookback():
    store = open_store()
    config = PipelineConfig(model_name="lm").with_overrides(["monitor.compact_lookback_hours=1"])
    for h in range(3):
        write_records(store, "lm", synthetic_records(20, seed=h, start=T0 + timedelta(hours=h), spacing_s=60))
    with disable_run_logger():  # closed before 16:55; the lookback starts in the hour of 15:55
        keys = compact_traffic.fn(config, now=T0 + timedelta(hours=3, minutes=5))
    assert [k.split("/")[5] for k in keys] == ["15"]  # 14:00 is beyond the lookback, 16:00 within the grace period
