"""Against a real Prefect API: drift events in a burst never give two retrains at once.

The events are emitted directly (as a second monitor, a replay or a bug would), so our cooldown is
not what stops them: every event makes the trigger create a retrain run, and the deployment's
concurrency limit (1, CANCEL_NEW) decides which may start. The test plays the runner: it proposes
Pending, then Running, through the client, so the server's orchestration rules (SecureFlowConcurrencySlots
takes the deployment's slot at the move to Pending, ReleaseFlowConcurrencySlots gives it back when the
run leaves Running) decide every transition.
"""
from __future__ import annotations

import time
import uuid
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterCreatedBy
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events import emit_event
from prefect.states import Completed, Pending, Running

from llmops.infra.config import PipelineConfig
from llmops.monitoring.records import DriftEvent
from llmops.tasks.monitoring import DRIFT_EVENT

pytestmark = pytest.mark.usefixtures("prefect_api")


PROBE = "probe"  # the window id prefix of the events that only check the trigger is live


def emit_drift(name: str, window: int, prefix: str = "w") -> None:
    payload = DriftEvent(model_name=name, model_version=1, window_id=f"{prefix}{window}", severity="high",
                         signals=["prompt_tokens"])
    emit_event(event=DRIFT_EVENT,
               resource={"prefect.resource.id": f"llmops.model.{name}", "prefect.resource.name": name},
               payload=payload.model_dump(mode="json"))


def wait_until(predicate, what: str, timeout: float = 90.0, interval: float = 0.5):
    """Poll ``predicate`` until it returns something truthy (returned); past ``timeout``, fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(interval)


def model_runs(client, deployment_id: UUID, name: str, probes: bool = False) -> list[FlowRun]:
    """The runs the drift trigger created for model ``name`` through this deployment, oldest first: those of
    probe events when ``probes``, else the others. Other tests apply the same ``retrain/retrain`` deployment
    for their own models, so its runs are told apart by the config they carry."""
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(created_by=FlowRunFilterCreatedBy(type_=["AUTOMATION"])),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
    )
    runs = [r for r in runs if r.parameters["config"]["model_name"] == name
            and r.parameters["drift"]["window_id"].startswith(PROBE) == probes]
    return sorted(runs, key=lambda r: r.created)


def triggered(client, deployment_id: UUID, name: str, count: int, timeout: float = 90.0) -> list[FlowRun]:
    """The (non-probe) runs the drift trigger created for model ``name``, oldest first, once there are ``count``."""
    def enough() -> list[FlowRun] | None:
        runs = model_runs(client, deployment_id, name)
        return runs if len(runs) >= count else None

    return wait_until(enough, f"{count} triggered retrain runs of {name}", timeout)


def wait_for_live_trigger(client, deployment_id: UUID, name: str, timeout: float = 90.0) -> None:
    """Emit probe drift events until one makes the trigger create a run.

    The triggers service loads a new automation shortly after ``apply``; an event that arrives before that is
    not acted on, so the test's own events wait until a probe's run shows the trigger acts on them."""
    probes = iter(range(10**6))

    def probe_ran() -> list[FlowRun]:
        emit_drift(name, next(probes), prefix=PROBE)
        return model_runs(client, deployment_id, name, probes=True)

    wait_until(probe_ran, f"the drift trigger of {name} to act on a probe event", timeout, interval=2.0)


def test_a_burst_of_drift_events_runs_one_retrain_and_cancels_the_others():
    from llmops.flows.deployments import build_deployments

    name = f"burst-{uuid.uuid4().hex[:8]}"
    config = PipelineConfig(model_name=name)
    retrain = next(d for d in build_deployments(config) if d.name == "retrain")
    deployment_id = retrain.apply()

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)  # what the server enforces, not what we asked for
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
        wait_for_live_trigger(client, deployment_id, name)
        for window in range(3):
            emit_drift(name, window)
        runs = triggered(client, deployment_id, name, count=3)
        assert len(runs) == 3, "every event (no cooldown on this path) makes the trigger create a run"
        assert {r.parameters["drift"]["window_id"] for r in runs} == {f"w{i}" for i in range(3)}

        # a runner picks the runs up: the first to reach Pending takes the slot; the others are refused and cancelled
        first, *others = runs
        assert client.set_flow_run_state(first.id, Pending()).status.value == "ACCEPT"
        for run in others:
            result = client.set_flow_run_state(run.id, Pending())
            assert result.status.value == "REJECT" and result.state.type == StateType.CANCELLED
            assert "concurrency limit" in result.details.reason.lower()
        assert client.set_flow_run_state(first.id, Running()).status.value == "ACCEPT"
        for run in others:  # a cancelled run cannot be restarted past the limit either
            assert client.read_flow_run(run.id).state.type == StateType.CANCELLED
            assert client.set_flow_run_state(run.id, Pending()).state.type == StateType.CANCELLED
        assert client.read_deployment(deployment_id).global_concurrency_limit.active_slots == 1

        # once the first retrain finishes, the slot is free: the next drift event's retrain may run
        assert client.set_flow_run_state(first.id, Completed()).status.value == "ACCEPT"
        assert client.read_deployment(deployment_id).global_concurrency_limit.active_slots == 0
        emit_drift(name, 3)
        later = triggered(client, deployment_id, name, count=4)[-1]
        assert later.id not in {r.id for r in runs}
        assert client.set_flow_run_state(later.id, Pending()).status.value == "ACCEPT"
        assert client.set_flow_run_state(later.id, Running()).status.value == "ACCEPT"

        states = [client.read_flow_run(r.id).state.type for r in [*runs, later]]
    assert states == [StateType.COMPLETED, StateType.CANCELLED, StateType.CANCELLED, StateType.RUNNING]
    assert sum(s == StateType.RUNNING for s in states) <= 1
