"""The monitoring loop as it runs in production: on its schedule, against a real Prefect server.

Real parts: `prefect server start` (its scheduler creates the monitor's runs from an Interval
schedule), `llmops deploy` as the runner process that executes them and the triggered retrain,
the training pipeline of a tiny model, and traffic captured by the served model's own code. The
test only writes the traffic and watches through the Prefect client; nothing calls the monitor.
"""
from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from llmops.flows.local.server import LocalPrefectServer, deployment_runner
from llmops.infra.config import PipelineConfig
from llmops.infra.store import open_store
from llmops.infra.traffic.log import parse_ts, write_records
from tests.helpers import drain_prefect_workers
from tests.served_loop import OVERRIDES, ROOT, deployment, drifted_traffic, final_runs, poll, runs_of

FAST_SERVER = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "3",
               "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "6"}


def log_text(client, run: FlowRun) -> str:
    return "\n".join(log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))))


def test_the_scheduled_monitor_alerts_once_triggers_one_retrain_and_the_gate_decides(tmp_path):
    from llmops.flows.training_pipeline import training_pipeline
    from llmops.flows.triggered import latest_gate

    config = PipelineConfig.from_yaml(ROOT / "configs" / "tiny.yaml", OVERRIDES)
    server = LocalPrefectServer(tmp_path / "prefect", env=FAST_SERVER).start()
    runner = None
    try:
        server.wait_healthy()
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            first = training_pipeline(config)
            assert first.promoted and first.version.version == 1
            write_records(open_store(), config.model_name, drifted_traffic(config))

            config_path = tmp_path / "config.yaml"
            config_path.write_text(config.to_yaml())
            runner = deployment_runner(config_path, server.api_url, tmp_path / "runner.log", tmp_path / "prefect",
                                       env={"PREFECT_RUNNER_POLL_FREQUENCY": "2"}).start()
            with get_client(sync_client=True) as client:
                monitor = poll("the monitor deployment", lambda: deployment(client, "monitor-drift/monitor"), 90)
                retrain = poll("the retrain deployment", lambda: deployment(client, "retrain/retrain"), 30)

                # two scheduled monitor runs complete: the first alerts and emits, the second alerts inside the cooldown
                # (a run that starts while another holds the monitor's slot is cancelled: CANCEL_NEW)
                done = poll("two completed scheduled monitor runs", lambda: _completed(runs_of(client, monitor.id), 2),
                            timeout=150)
                _stop_schedule(client, monitor.id)  # spare the two cores for the retrain
                assert all(r.auto_scheduled for r in done), "the scheduler created them, not the test"
                logs = [poll(f"the decision in {r.name}'s logs", lambda r=r: _decision(client, r), 30) for r in done]
                assert "drift event: emitted (alert confirmed)" in logs[0]
                assert "drift event: not emitted" in logs[1] and "cooldown" in logs[1]

                # exactly one retrain, created by the trigger, runs the gate
                triggered = poll("the triggered retrain", lambda: runs_of(client, retrain.id, automation=True), 60)
                final = poll("the retrain to finish", lambda: final_runs(runs_of(client, retrain.id, automation=True)),
                             timeout=240, every=2)[0]
                assert final.id == triggered[0].id and final.state.type == StateType.COMPLETED, runner.tail(60)
                assert final.parameters["reason"] == "drift"
                # from the event, as the trigger counts: the run's own creation comes seconds after it (the automation's
                # latency on a busy box), which a measure from `created` wrongly took out of the review window
                emitted = parse_ts(open_store().get_json(f"monitoring/{config.model_name}/last_drift_event.json")["at"])
                delay = (triggered[0].expected_start_time - emitted).total_seconds()
                assert delay >= 25, f"the review window schedules the retrain 30 s after the event, not {delay:.0f} s"
                assert len(runs_of(client, retrain.id)) == 1, "the second alert, inside the cooldown, created no run"
    finally:
        drain_prefect_workers()
        if runner is not None:
            runner.stop()
        server.stop()

    store = open_store()
    reports = sorted(k for k in store.list(f"monitoring/{config.model_name}") if k.endswith("/drift.json"))
    verdicts = [store.get_json(k)["verdict"] for k in reports]
    assert verdicts[:2] == ["alert", "alert"], verdicts
    event = store.get_json(f"monitoring/{config.model_name}/last_drift_event.json")
    assert event["window_id"] == reports[0].split("/")[2], "the event belongs to the first scheduled window"
    gate = latest_gate(store, config.model_name, after_version=1)
    assert gate is not None and gate.candidate_version == 2 and gate.production_version == 1 and gate.reason
    production = store.get_json(f"models/{config.model_name}/aliases/production.json")["version"]
    assert production == (2 if gate.promote else 1), "the gate, not the trigger, decides promotion"


def _completed(runs: list[FlowRun], count: int) -> list[FlowRun]:
    done = [r for r in runs if r.state is not None and r.state.type == StateType.COMPLETED]
    return done[:count] if len(done) >= count else []


def _stop_schedule(client, deployment_id) -> None:
    """Pause the deployment: the server deletes the runs its scheduler created that are still Scheduled."""
    client.pause_deployment(deployment_id)


def _decision(client, run: FlowRun) -> str:
    text = log_text(client, run)
    return text if "drift event:" in text else ""
