"""The monitoring flow: compact closed traffic hours, check a window for drift, emit the drift event
when the policy allows."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional

from prefect import flow

from llmops.infra.config import PipelineConfig
from llmops.monitoring.records import DriftOutcome
from llmops.tasks.monitoring import check_drift, compact_traffic, decide_drift_event


@flow(name="monitor-drift", log_prints=True)
def monitor_drift(config: PipelineConfig = PipelineConfig(), start: Optional[datetime] = None,
                  end: Optional[datetime] = None) -> DriftOutcome:
    """Compact closed traffic hours, then check [start, end) (default: the last ``monitor.window_minutes``)
    against the production reference."""
    end = end or datetime.now(timezone.utc)
    start = start or end - timedelta(minutes=config.monitor.window_minutes)
    if config.monitor.compact_traffic:
        # a speed-up, not a precondition: the check reads JSONL where compaction failed
        compact_traffic(config, return_state=True)
    report = check_drift(config, start, end)
    return decide_drift_event(config, report)
