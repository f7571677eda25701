"""The canary check: promote the canary or roll it back on the traffic each version served since it started."""
from __future__ import annotations

from typing import Optional

from prefect import flow

from llmops.infra.config import PipelineConfig
from llmops.monitoring.canary import CanaryVerdict
from llmops.tasks.registration import apply_canary_verdict, check_canary


@flow(name="canary-check", log_prints=True)
def canary_check(config: PipelineConfig = PipelineConfig()) -> Optional[CanaryVerdict]:
    """Compare the canary with production (``serve.canary``'s margins) and act: wait for more traffic, promote
    (production moves to the canary), or roll back (the canary alias is cleared; ``llmops.model.rolled_back``)."""
    verdict = check_canary(config)
    if verdict is not None:
        apply_canary_verdict(config, verdict)
    return verdict
