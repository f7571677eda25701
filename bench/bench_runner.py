"""Benchmark: what runs the deployments on one host, `serve` (llmops up's choice) or a process work pool + worker.

Both arms run against the same local Prefect server (SQLite, as ``llmops up``), with Prefect's default polling:

* ``serve``: ``llmops deploy --config FILE``, the runner ``llmops up`` starts;
* ``worker``: ``llmops deploy --pool P`` (applies the deployments to a process pool), then ``prefect worker start
  --pool P``.

For each, the time until the deployments are registered and the runner or worker is ready, the resident memory of
the long-running process tree when idle, and ``--runs`` runs of ``canary-check/canary`` (a flow that starts, finds
nothing to do and completes) started through the API one after another: seconds from creation to Running (how
soon the runner or worker picks a run up) and to Completed.

    python bench/bench_runner.py            # 3 runs per arm

Writes bench/results/runner.json and runner.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from common import load_average, markdown_table, run_meta, write_results

from llmops.flows.local.server import ChildProcess, LocalPrefectServer, quiet_prefect_env
from llmops.infra.config import PipelineConfig

POOL = "bench-local"
FLOW = "canary-check/canary"


def _tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def _deployment_id(api: str) -> str | None:
    found = httpx.post(f"{api}/deployments/filter", json={"deployments": {"name": {"any_": ["canary"]}}}).json()
    return found[0]["id"] if found else None


def _wait_run(api: str, run_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}").json()
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(0.25)
    raise RuntimeError(f"flow run {run_id} did not finish within {timeout:.0f} s")


def _arm(name: str, api: str, home: Path, config_path: Path, runs: int) -> dict:
    env = {**quiet_prefect_env(home), "PREFECT_API_URL": api}
    cli = [sys.executable, "-m", "llmops.flows.cli", "deploy", "--config", str(config_path)]
    started = time.monotonic()
    if name == "serve":
        proc = ChildProcess(cli, home / f"{name}.log", env).start()
    else:
        subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", POOL, "--type", "process",
                        "--overwrite"], env={**os.environ, **env}, check=True, capture_output=True)
        subprocess.run([*cli, "--pool", POOL], env={**os.environ, **env}, check=True, capture_output=True)
        proc = ChildProcess([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
                            home / f"{name}.log", env).start()
    try:
        while _deployment_id(api) is None or (name == "worker" and "started" not in proc.tail(50).lower()):
            if not proc.running():
                raise RuntimeError(f"{name} exited:\n{proc.tail()}")
            time.sleep(0.25)
        ready_s = time.monotonic() - started
        time.sleep(5)
        idle_mb = _tree_rss_mb(proc.proc.pid)
        deployment = _deployment_id(api)
        pickup, total = [], []
        for _ in range(runs):
            response = httpx.post(f"{api}/deployments/{deployment}/create_flow_run", json={})
            assert response.status_code < 300, response.text
            run = response.json()
            done = _wait_run(api, run["id"])
            assert done["state_type"] == "COMPLETED", done["state"]
            created = _ts(done["created"])
            pickup.append(_ts(done["start_time"]) - created)
            total.append(_ts(done["end_time"]) - created)
        return {"arm": name, "ready_s": ready_s, "idle_rss_mb": idle_mb, "pickup_s": pickup, "total_s": total}
    finally:
        proc.stop()


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmops-bench-runner-") as tmp:
        home = Path(tmp)
        config_path = home / "config.yaml"
        config_path.write_text(PipelineConfig(model_name="bench-runner").to_yaml())
        server = LocalPrefectServer(home / "prefect").start().wait_healthy()
        try:
            arms = [_arm(name, server.api_url, home, config_path, args.runs) for name in ("serve", "worker")]
        finally:
            server.stop()
    rows = [[a["arm"], f"{a['ready_s']:.1f}", f"{a['idle_rss_mb']:.0f}", f"{statistics.median(a['pickup_s']):.1f}",
             f"{statistics.median(a['total_s']):.1f}", " / ".join(f"{x:.1f}" for x in a["total_s"])] for a in arms]
    md = ("# One host: Prefect `serve` (llmops up) vs a process work pool and worker\n\n"
          f"Same local Prefect server (SQLite), Prefect's default polling; {args.runs} runs of `{FLOW}` each, one "
          f"after another. Load average at the end: {load_average()}.\n\n"
          + markdown_table(["arm", "ready s", "idle RSS MB (process tree)", "median creation → running s",
                            "median creation → completed s", "each run s"], rows) + "\n")
    write_results("runner", {"meta": run_meta(runs=args.runs), "arms": arms}, md)
    print(md)


if __name__ == "__main__":
    main()
