"""Adapt stage: a drift-triggered retrain's data (the window's cleaned traffic + a replay) and warm-start config."""
from __future__ import annotations

from typing import Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from llmops.infra.config import PipelineConfig
from llmops.monitoring.records import DriftEvent
from llmops.tasks.core.adaptation import AdaptationPlan, plan_adaptation
from llmops.tasks.core.context import artifact_key, cache_dir, store, timeout_s


@task(name="prepare-adaptation", retries=1, retry_delay_seconds=5,
      timeout_seconds=timeout_s("prepare-adaptation"))
def prepare_adaptation(config: PipelineConfig, drift: DriftEvent) -> Optional[AdaptationPlan]:
    """The plan to continue production on the drift window's traffic, or None (logged why): retrain in full."""
    logger = get_run_logger()
    plan, why = plan_adaptation(store(), config, drift.window_start, drift.window_end, cache_dir())
    if plan is None:
        logger.warning("no warm start (%s): retraining in full", why)
        return None
    a = plan.dataset.adaptation
    rows = [{"what": k, "records": v} for k, v in a.model_dump(exclude={"base_dataset", "window_start", "window_end",
                                                                         "base_version", "invalid"}).items()]
    rows += [{"what": f"invalid: {reason}", "records": n} for reason, n in sorted(a.invalid.items())]
    create_table_artifact(rows, key=artifact_key(config.model_name, "adaptation-data"),
                          description=f"adaptation of v{a.base_version} to {drift.window_id}: {why}")
    logger.info("adaptation: %s", why)
    return plan
