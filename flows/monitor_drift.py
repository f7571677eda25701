"""The monitoring flow: compact closed traffic hours, check a window for drift (in one process, or as a map over its
hour partitions on a Dask cluster), emit the drift event when the policy allows."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional

from prefect import flow, unmapped

from llmops.infra.config import PipelineConfig
from llmops.monitoring.records import DriftOutcome, DriftReport
from llmops.tasks.monitoring import (
    accumulate_partition,
    check_drift,
    cluster_task_runner,
    compact_traffic,
    decide_drift_event,
    finish_drift_check,
    plan_drift_check,
)


@flow(name="monitor-drift", log_prints=True)
def monitor_drift(config: PipelineConfig = PipelineConfig(), start: Optional[datetime] = None,
                  end: Optional[datetime] = None) -> DriftOutcome:
    """Compact closed traffic hours, then check [start, end) (default: the last ``monitor.window_minutes``)
    against the production reference, where ``monitor.cluster`` says."""
    end = end or datetime.now(timezone.utc)
    start = start or end - timedelta(minutes=config.monitor.window_minutes)
    if config.monitor.compact_traffic:
        # a speed-up, not a precondition: the check reads JSONL where compaction failed
        compact_traffic(config, return_state=True)
    if config.monitor.cluster == "local":
        report = check_drift(config, start, end)
    else:
        runner = cluster_task_runner(config.monitor.cluster)
        report = check_drift_on_cluster.with_options(task_runner=runner)(config, start, end)
    return decide_drift_event(config, report)


@flow(name="check-drift-on-cluster", log_prints=True)
def check_drift_on_cluster(config: PipelineConfig, start: datetime, end: datetime) -> DriftReport:
    """The check as a map over the window's hour partitions on this flow's task runner (the cluster: each worker
    reads its partitions from the store) and a merge of their partials here: the report check-drift would give."""
    plan = plan_drift_check(config, start, end)
    partials = accumulate_partition.map(unmapped(plan), plan.partitions)
    return finish_drift_check(config, plan, partials)
