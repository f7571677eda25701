"""The drift -> retrain loop on a Prefect server whose database is PostgreSQL instead of the embedded SQLite.

Real parts: a throwaway PostgreSQL cluster (tests/postgres.py), ``prefect server start`` pointed at it by
``PREFECT_API_DATABASE_CONNECTION_URL`` (what ``llmops up`` passes on from its environment), ``llmops deploy`` as
the runner, the training pipeline of a tiny model and the drift check. The runs and the drift event are then read
back from Postgres's own tables, so a server that quietly used SQLite fails the test.
"""
from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from llmops.flows.local.server import LocalPrefectServer, deployment_runner
from llmops.infra.config import PipelineConfig
from llmops.infra.store import open_store
from llmops.infra.traffic.log import write_records
from llmops.tasks.core.context import model_resource
from llmops.tasks.monitoring import DRIFT_EVENT
from tests.helpers import drain_prefect_workers
from tests.postgres import PostgresDatabase, throwaway_postgres
from tests.served_loop import OVERRIDES, ROOT, deployment, drifted_traffic, final_runs, poll, runs_of

pytestmark = pytest.mark.postgres

# the test starts the drift check itself (no schedule to wait for), the trigger schedules the retrain at once, and
# the retrain's continued training is short: what is under test is the server, not the adaptation
LOOP = [*OVERRIDES, "schedule.monitor_every_minutes=null", "schedule.retrain_delay_minutes=0", "adapt.max_steps=40"]


@pytest.fixture
def postgres():
    with throwaway_postgres() as database:
        yield database


def test_a_drift_event_starts_a_retrain_that_completes_on_a_prefect_server_backed_by_postgres(
        tmp_path, postgres: PostgresDatabase):
    from llmops.flows.monitor_drift import monitor_drift
    from llmops.flows.training_pipeline import training_pipeline
    from llmops.flows.triggered import latest_gate

    config = PipelineConfig.from_yaml(ROOT / "configs" / "tiny.yaml", LOOP)
    home = tmp_path / "prefect"
    server = LocalPrefectServer(home, env={"PREFECT_API_DATABASE_CONNECTION_URL": postgres.url}).start()
    runner = None
    try:
        server.wait_healthy()
        config_path = tmp_path / "config.yaml"
        config_path.write_text(config.to_yaml())
        # started first, it registers the deployments while the first model trains: nothing is scheduled to run
        runner = deployment_runner(config_path, server.api_url, tmp_path / "runner.log", home,
                                   env={"PREFECT_RUNNER_POLL_FREQUENCY": "2"}).start()
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            assert training_pipeline(config).promoted
            write_records(open_store(), config.model_name, drifted_traffic(config))
            with get_client(sync_client=True) as client:
                retrain = poll("the retrain deployment", lambda: deployment(client, "retrain/retrain"), 90)
                outcome = monitor_drift(config)
                assert outcome.verdict == "alert" and outcome.event_emitted, outcome
                triggered = poll("the triggered retrain", lambda: runs_of(client, retrain.id, automation=True), 60)
                final = poll("the retrain to finish", lambda: final_runs(runs_of(client, retrain.id, automation=True)),
                             timeout=240, every=2)[0]
            assert final.id == triggered[0].id and final.state.type == StateType.COMPLETED, runner.tail(60)
            assert final.parameters["reason"] == "drift"
            assert final.parameters["drift"]["window_id"] == outcome.window_id, "the run carries the event's window"
    finally:
        drain_prefect_workers()
        if runner is not None:
            runner.stop()
        server.stop()

    gate = latest_gate(open_store(), config.model_name, after_version=1)
    assert gate is not None and gate.candidate_version == 2, "the retrain registered a candidate and gated it"
    # the server's state is in Postgres, and nowhere else
    assert not list(home.glob("*.db")), f"the server created a SQLite database: {list(home.glob('*.db'))}"
    rows = {r["id"]: r for r in postgres.fetch(
        "SELECT r.id, f.name AS flow, r.state_type::text AS state, r.created_by->>'type' AS created_by "
        "FROM flow_run r JOIN flow f ON f.id = r.flow_id")}
    assert {r["flow"] for r in rows.values()} >= {"training-pipeline", "monitor-drift", "retrain"}
    assert (rows[final.id]["flow"], rows[final.id]["state"], rows[final.id]["created_by"]) == (
        "retrain", "COMPLETED", "AUTOMATION")
    resource = model_resource(config.model_name)["prefect.resource.id"]
    events = postgres.fetch("SELECT payload->>'window_id' AS window_id FROM events WHERE event = $1 "
                            "AND resource_id = $2", DRIFT_EVENT, resource)
    assert [e["window_id"] for e in events] == [outcome.window_id], "one drift event, stored by the server"


def test_a_wrong_database_password_stops_the_server_at_start_up_with_the_reason(tmp_path, postgres: PostgresDatabase):
    wrong = PostgresDatabase(postgres.port, postgres.user, "not-" + postgres.password, postgres.database)
    server = LocalPrefectServer(tmp_path / "prefect", env={"PREFECT_API_DATABASE_CONNECTION_URL": wrong.url}).start()
    try:
        with pytest.raises(RuntimeError, match="exited during start-up") as failure:
            server.wait_healthy()
    finally:
        server.stop()
    assert f'password authentication failed for user "{postgres.user}"' in str(failure.value)
