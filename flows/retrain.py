"""The retrain flow: the training pipeline again, on the current sources, started by drift or by the clock."""
from __future__ import annotations

from typing import Optional

from prefect import flow, get_run_logger

from llmops.flows.training_pipeline import training_pipeline
from llmops.infra.config import PipelineConfig
from llmops.models.records import PipelineReport


@flow(name="retrain", log_prints=True)
def retrain(config: PipelineConfig = PipelineConfig(), reason: str = "schedule",
            drift_event_id: Optional[str] = None, drift_window: Optional[str] = None,
            drift_signals: Optional[str] = None, drift_severity: Optional[str] = None) -> PipelineReport:
    """Rerun the pipeline; a drift-triggered run carries the event and window that started it.

    Promotion still goes through the gate: retraining never replaces production by itself.
    """
    logger = get_run_logger()
    if reason == "drift":
        logger.info("retraining on drift event %s (window %s, signals %s, severity %s)",
                    drift_event_id, drift_window, drift_signals, drift_severity)
    else:
        logger.info("retraining: %s", reason)
    return training_pipeline(config)
