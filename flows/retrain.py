"""The retrain flow: the training pipeline again, on the current sources, started by drift or by the clock."""
from __future__ import annotations

from typing import Literal, Optional

from prefect import flow, get_run_logger

from llmops.flows.training_pipeline import training_pipeline
from llmops.infra.config import PipelineConfig
from llmops.models.records import PipelineReport
from llmops.monitoring.records import DriftEvent


@flow(name="retrain", log_prints=True)
def retrain(config: PipelineConfig = PipelineConfig(), reason: Literal["schedule", "drift", "manual"] = "schedule",
            drift_event_id: Optional[str] = None, drift: Optional[DriftEvent] = None) -> PipelineReport:
    """Rerun the pipeline; a drift-triggered run carries the event (its window, signals and severity).

    Promotion still goes through the gate: retraining never replaces production by itself.
    """
    logger = get_run_logger()
    if drift is not None:
        logger.info("retraining on drift event %s: %s v%d, window %s to %s, signals %s, severity %s", drift_event_id,
                    drift.model_name, drift.model_version, drift.window_start, drift.window_end,
                    ", ".join(drift.signals) or "none", drift.severity)
    else:
        logger.info("retraining: %s", reason)
    return training_pipeline(config)
