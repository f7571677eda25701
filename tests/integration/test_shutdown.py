"""``llmops up``, ``llmops deploy`` and ``llmops serve`` stop cleanly on SIGTERM and SIGINT (systemd, ``docker stop``,
Kubernetes, Ctrl-C): exit status 0, no child left running, schedules left active, captured traffic in the store."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import psutil
import pytest

from llmops.flows.local.server import free_port
from llmops.infra.store import LocalStore
from tests.helpers import make_registered_model

DEPLOYMENTS = {"train", "monitor", "retrain", "canary"}


def launch(args: list[str], tmp_path: Path, **env: str) -> subprocess.Popen:
    """``llmops ARGS`` in its own session (as a service manager starts it), with this test's store and cache."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "PREFECT_HOME"))}
    log = open(tmp_path / f"{args[0]}.log", "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "llmops.flows.cli", *args], cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env={**base, **env})
    finally:
        log.close()


def tail(tmp_path: Path, command: str, lines: int = 40) -> str:
    return "\n".join((tmp_path / f"{command}.log").read_text(errors="replace").splitlines()[-lines:])


def wait_until(predicate, what: str, proc: subprocess.Popen, log: Callable[[], str] = str, timeout: float = 180.0):
    """Poll ``predicate`` until it returns something truthy; fail early, with ``log()``, if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        assert proc.poll() is None, f"it exited ({proc.returncode}) before {what}:\n{log()}"
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.5)


def deployments(api_url: str) -> dict[str, dict]:
    """The deployments the API holds, by name, as JSON (no Prefect client: the test process keeps its settings)."""
    found = httpx.post(f"{api_url}/deployments/filter", json={}, timeout=10).raise_for_status().json()
    return {d["name"]: d for d in found}


def kill_group(proc: subprocess.Popen) -> None:
    """After a failure: the command and what it started (its session's group) go, so no test leaves orphans."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def stop(proc: subprocess.Popen, sig: int, timeout: float = 90.0) -> int:
    """Send ``sig`` to the process alone (as ``docker stop`` and Kubernetes do) and wait for its exit status."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise AssertionError(f"still running {timeout:.0f} s after {signal.Signals(sig).name}") from None


def survivors(processes: list[psutil.Process], grace: float = 5.0) -> list[str]:
    """The processes still running (zombies count as gone: they run nothing and hold no port)."""
    _, alive = psutil.wait_procs(processes, timeout=grace)
    left = []
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline()[:6])}")
        except psutil.NoSuchProcess:
            pass
    for p in alive:  # leave nothing behind for the next test either
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return left


# ``llmops up`` with its two children swapped for cheap process trees: the same run_up, signal handling and stops.
# Each child leads a group holding a grandchild that takes a second to exit on SIGTERM, so an ``up`` that waits
# only for its direct children leaves it running.
FAKE_UP = textwrap.dedent("""
    import sys
    from pathlib import Path
    from llmops.flows.local import up
    from llmops.flows.local.server import ChildProcess
    from llmops.infra.config import PipelineConfig

    GRANDCHILD = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), sys.exit(0))); "
                  "time.sleep(600)")
    TREE = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}]); time.sleep(600)"

    class Tree(ChildProcess):
        api_url = ui_url = "http://127.0.0.1:9/api"

        def __init__(self, *args, **kwargs):
            home = Path(sys.argv[1]) / "cache" / "prefect"  # where the real server's log makes run_up's folder
            super().__init__([sys.executable, "-c", TREE], home / f"tree-{id(self)}.log", {})

        def wait_healthy(self):
            return self

    up.LocalPrefectServer = Tree
    up.deployment_runner = lambda *args, **kwargs: Tree()
    sys.exit(up.run_up(PipelineConfig()))
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_stops_every_process_its_children_started_and_exits_0(tmp_path, sig):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "PREFECT_HOME"))}
    proc = subprocess.Popen([sys.executable, "-c", FAKE_UP, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, env={**env, "LLMOPS_CACHE_DIR": str(tmp_path / "cache")})
    try:
        wait_until(lambda: len(descendants(proc.pid)) == 4, "two children with a grandchild each", proc, timeout=60)
        tree = descendants(proc.pid)
    except BaseException:
        kill_group(proc)
        raise
    assert stop(proc, sig, timeout=30) == 0
    assert proc.stdout.read().rstrip().endswith("llmops up: stopped")
    assert survivors(tree, grace=0) == [], "left running after `llmops up` exited"


@pytest.mark.slow  # about 45 s here: a Prefect server, the runner, a flow run
def test_llmops_up_stops_its_server_runner_and_flow_runs_on_sigterm_and_exits_0(tmp_path):
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    proc = launch(["up", "--port", str(port)], tmp_path, LLMOPS_CACHE_DIR=str(tmp_path / "cache"),
                  LLMOPS_STORE_URI=str(tmp_path / "store"))
    try:
        log = partial(tail, tmp_path, "up")
        wait_until(lambda: httpx.get(f"{api_url}/health", timeout=2).status_code == 200, "the Prefect API answered",
                   proc, log)
        train = wait_until(lambda: deployments(api_url).get("train"), "the deployments were registered", proc, log)
        # a flow run in flight: the runner's subprocess must stop with it
        httpx.post(f"{api_url}/deployments/{train['id']}/create_flow_run", json={}, timeout=10).raise_for_status()
        wait_until(lambda: len(descendants(proc.pid)) >= 3, "the runner started the flow run", proc, log)
        children = descendants(proc.pid)
    except BaseException:
        kill_group(proc)
        raise
    status = stop(proc, signal.SIGTERM)
    assert status == 0, tail(tmp_path, "up")
    assert survivors(children, grace=0) == [], "left running after `llmops up` exited"
    runner_log = (tmp_path / "cache" / "prefect" / "deployments.log").read_text(errors="replace")
    assert "Pausing all deployments" not in runner_log


def test_stopping_llmops_deploy_leaves_the_schedules_active(tmp_path, prefect_api):
    """The runner's stop must not pause the deployments, as Prefect's ``pause_on_shutdown`` default does: that stops
    their schedules for everyone until a serve applies them again."""
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    proc = launch(["deploy", "--set", "schedule.monitor_every_minutes=600"], tmp_path, PREFECT_API_URL=api_url,
                  LLMOPS_CACHE_DIR=str(tmp_path / "cache"), LLMOPS_STORE_URI=str(tmp_path / "store"))
    try:
        wait_until(lambda: DEPLOYMENTS <= set(deployments(api_url)), "the deployments were registered", proc,
                   partial(tail, tmp_path, "deploy"))
        time.sleep(1)  # past registration, the runner is (most likely) polling, and Prefect's SIGTERM handler answers
        children = descendants(proc.pid)
    except BaseException:
        kill_group(proc)
        raise
    assert stop(proc, signal.SIGTERM) == 0, tail(tmp_path, "deploy")
    assert survivors(children) == []
    after = deployments(api_url)
    for name in ("monitor", "retrain"):
        assert not after[name]["paused"], f"{name} was paused on shutdown"
        assert after[name]["schedules"] and all(s["active"] for s in after[name]["schedules"]), after[name]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_llmops_serve_flushes_captured_traffic_and_exits_0(tmp_path, sig):
    store = LocalStore(tmp_path / "store")
    make_registered_model(store, "lm")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # nothing ships by itself during the test: the record reaches the store only by the flush on shutdown
    json_log = sig == signal.SIGINT  # one of the two runs logs JSON lines
    proc = launch(["serve", "--port", str(port), "--set", "model_name=lm", "--set", "serve.flush_every=100000",
                   "--set", "serve.flush_interval_s=3600", "--set", "serve.reload_interval_s=0",
                   *(["--log-json"] if json_log else [])], tmp_path,
                  LLMOPS_CACHE_DIR=str(tmp_path / "cache"), LLMOPS_STORE_URI=str(store.root))
    try:
        wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, "the server answered", proc,
                   partial(tail, tmp_path, "serve"))
        done = httpx.post(f"{url}/v1/completions", json={"model": "lm", "prompt": "hello", "max_tokens": 2},
                          timeout=60)
        assert done.status_code == 200, done.text
        children = descendants(proc.pid)
    except BaseException:
        kill_group(proc)
        raise
    assert not store.list("traffic/lm"), "shipped before the stop: the test would prove nothing"
    assert stop(proc, sig, timeout=60) == 0, tail(tmp_path, "serve")
    assert survivors(children) == []
    captured = [json.loads(line)["id"] for key in store.list("traffic/lm")
                for line in store.get_text(key).splitlines() if line.strip()]
    assert captured == [done.json()["id"]], tail(tmp_path, "serve")
    lines = (tmp_path / "serve.log").read_text().splitlines()
    request_id = done.headers["x-request-id"]
    if json_log:
        access = [json.loads(line) for line in lines if line.startswith("{") and request_id in line]
        assert [(a["logger"], a["path"], a["status"]) for a in access] == [("llmops.access", "/v1/completions", 200)]
    else:
        assert any('"POST /v1/completions" 200' in line and f"id={request_id}" in line for line in lines)
