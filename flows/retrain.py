"""The retrain flow: started by drift (a warm start on the drifted traffic), the clock or a person (a full retrain)."""
from __future__ import annotations

from typing import Literal, Optional

from prefect import flow, get_run_logger

from llmops.flows.training_pipeline import run_stages, training_pipeline
from llmops.infra.config import PipelineConfig
from llmops.models.records import PipelineReport
from llmops.monitoring.records import DriftEvent
from llmops.tasks.adaptation import prepare_adaptation


@flow(name="retrain", log_prints=True)
def retrain(config: PipelineConfig = PipelineConfig(), reason: Literal["schedule", "drift", "manual"] = "schedule",
            drift_event_id: Optional[str] = None, drift: Optional[DriftEvent] = None) -> PipelineReport:
    """Retrain; a drift-triggered run carries the event (its window, signals and severity).

    With ``adapt.on_drift=warm_start`` (the default) a drift-triggered run continues training the production
    model on the window's traffic mixed with a replay of its data, and is gated on held-out traffic and on
    production's test split; otherwise, and when that is not possible, it reruns the whole pipeline on
    ``data.sources``. Promotion always goes through the gate: retraining never replaces production by itself.
    """
    logger = get_run_logger()
    if drift is None:
        logger.info("retraining: %s", reason)
        return training_pipeline(config)
    logger.info("retraining on drift event %s: %s v%d, window %s to %s, signals %s, severity %s", drift_event_id,
                drift.model_name, drift.model_version, drift.window_start, drift.window_end,
                ", ".join(drift.signals) or "none", drift.severity)
    if config.adapt.on_drift == "warm_start" and drift.window_start and drift.window_end:
        plan = prepare_adaptation(config, drift)
        if plan is not None:
            return run_stages(plan.config, dataset=plan.dataset)
    return training_pipeline(config)
