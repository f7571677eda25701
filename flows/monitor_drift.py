"""The monitoring flow: check a traffic window for drift and, when the policy allows, emit the drift event."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional

from prefect import flow

from infra.config import PipelineConfig
from monitoring.results import DriftOutcome
from tasks.drift import check_drift, decide_drift_event


@flow(name="monitor-drift", log_prints=True)
def monitor_drift(config: PipelineConfig = PipelineConfig(), start: Optional[datetime] = None,
                  end: Optional[datetime] = None) -> DriftOutcome:
    """Check [start, end) (default: the last ``monitor.window_minutes``) against the production reference."""
    end = end or datetime.now(timezone.utc)
    start = start or end - timedelta(minutes=config.monitor.window_minutes)
    report = check_drift(config, start, end)
    return decide_drift_event(config, report)
