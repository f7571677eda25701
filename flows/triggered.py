"""Finding and following flow runs that Prefect automations created (drift-triggered retrains), via the client."""
from __future__ import annotations

import time
from datetime import datetime
from typing import Optional
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterCreatedBy,
    FlowRunFilterExpectedStartTime,
)
from prefect.client.schemas.objects import FlowRun

from llmops.infra.store import ArtifactStore
from llmops.models.records import GateDecision
from llmops.models.release import Registry


def triggered_runs(deployment: str, since: datetime) -> list[FlowRun]:
    """Flow runs of ``deployment`` that an automation (a trigger) created, expected to start after ``since``."""
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                created_by=FlowRunFilterCreatedBy(type_=["AUTOMATION"]),
                expected_start_time=FlowRunFilterExpectedStartTime(after_=since),
            ),
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
        )


def wait_for_triggered_run(deployment: str, since: datetime, timeout: float = 120.0) -> FlowRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = triggered_runs(deployment, since)
        if runs:
            return runs[0]
        time.sleep(2)
    raise TimeoutError(f"no run of deployment {deployment!r} was triggered within {timeout:.0f} s")


def wait_for_final(flow_run_id: UUID, timeout: float = 900.0, every: float = 5.0) -> FlowRun:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {run.name!r} still {run.state_name} after {timeout:.0f} s")
            time.sleep(every)


def latest_gate(store: ArtifactStore, model_name: str, after_version: int = 0) -> Optional[GateDecision]:
    """The gate decision recorded with the newest registered version newer than ``after_version`` (its
    ``candidate_version`` is that version)."""
    registry = Registry(store, model_name)
    newer = [v for v in registry.versions() if v > after_version]
    if not newer:
        return None
    metadata = registry.manifest(newer[-1]).metadata
    return metadata.gate.model_copy(update={"candidate_version": newer[-1]}) if metadata else None
