"""The compose stack for real: images built from a local Debian base, Prefect on PostgreSQL, an S3-protocol store, a
process worker running the first training run, and the model server serving what it promoted.

No image registry is reachable here, so the images are built the way infra/docker/compose.local.yaml describes: a
Debian base made with debootstrap and ``docker import``, Python packages from a wheelhouse that pip fills on the
host (infra/docker/wheels/), PostgreSQL from Debian's package (postgres.Dockerfile) and moto's S3 server in place of
MinIO. Everything else (compose.yaml, bootstrap.sh, the Dockerfile) is what users run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import tomllib

from llmops.flows.local.server import free_port
from tests.services import require

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "infra" / "docker"
WHEELS = DOCKER / "wheels"
BASE = "llmops-base:bookworm"
IMAGE, POSTGRES_IMAGE = "llmops:ci", "llmops-postgres:ci"
PROJECT = "llmopsci"
API_KEY = "container-test-key"


def sh(*args: str, timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _base_image() -> None:
    """Debian bookworm with python3 and venv, from debootstrap: what ``python:3.11-slim-bookworm`` gives users."""
    if subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode == 0:
        return
    rootfs = Path(tempfile.mkdtemp(prefix="llmops-rootfs-"))
    try:
        sh("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
           str(rootfs), "http://deb.debian.org/debian")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        sh("docker", "import", "-", BASE, stdin=tar.stdout)
        assert tar.wait() == 0
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def _wheelhouse() -> None:
    """Every requirement as a wheel for the image's Python (Debian's 3.11.2), fetched by the host's pip."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = ["setuptools>=77", "moto[server]>=5",
             "async-timeout>=4.0.3"]  # redis needs it below Python 3.11.3; the host's newer Python hides that
    sh(sys.executable, "-m", "pip", "download", "-q", "-d", str(WHEELS), "-c", str(ROOT / "constraints.txt"),
       *project["dependencies"], *extra)


def _build() -> None:
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # Debian's docker.io has no buildx; the classic builder suffices
    sh("docker", "build", "-q", "-f", str(DOCKER / "Dockerfile"), "-t", IMAGE, "--build-arg", f"BASE_IMAGE={BASE}",
       "--build-arg", "PIP_ARGS=--no-index", "--build-arg", "EXTRA_PACKAGES=moto[server]", str(ROOT), env=env)
    sh("docker", "build", "-q", "-f", str(DOCKER / "postgres.Dockerfile"), "-t", POSTGRES_IMAGE,
       "--build-arg", f"BASE_IMAGE={BASE}", str(DOCKER), env=env)


@pytest.fixture(scope="module")
def stack():
    require(shutil.which("docker") is not None and
            subprocess.run(["docker", "info"], capture_output=True).returncode == 0, "no Docker daemon")
    require(shutil.which("debootstrap") is not None and os.geteuid() == 0, "debootstrap as root is needed")
    require(shutil.which("docker-compose") is not None, "no docker-compose")
    _base_image()
    _wheelhouse()
    _build()
    ports = {"PREFECT_PORT": free_port(), "LLMOPS_SERVE_PORT": free_port(), "S3_PORT": free_port(),
             "S3_CONSOLE_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "LLMOPS_IMAGE": IMAGE,
           "LLMOPS_POSTGRES_IMAGE": POSTGRES_IMAGE, "LLMOPS_CONFIG": "/configs/tiny.yaml", "LLMOPS_API_KEY": API_KEY}
    compose = ["docker-compose", "-p", PROJECT, "-f", str(DOCKER / "compose.yaml"),
               "-f", str(DOCKER / "compose.local.yaml")]
    sh(*compose, "down", "-v", "--remove-orphans", env=env)  # what an interrupted earlier run left
    try:
        sh(*compose, "up", "-d", "--no-build", env=env, timeout=600)
        yield {"compose": compose, "env": env, "api": f"http://127.0.0.1:{ports['PREFECT_PORT']}/api",
               "serve": f"http://127.0.0.1:{ports['LLMOPS_SERVE_PORT']}"}
    finally:
        logs = subprocess.run([*compose, "logs", "--no-color", "--tail", "40"], capture_output=True, text=True, env=env)
        print(logs.stdout[-20000:])
        subprocess.run([*compose, "down", "-v", "--remove-orphans"], capture_output=True, env=env, timeout=300)


def _wait(what: str, check, timeout: float, every: float = 3.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def _training_runs(api: str) -> list[dict]:
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
    train = next(d for d in deployments if d["name"] == "train")
    return httpx.post(f"{api}/flow_runs/filter", timeout=10,
                      json={"flow_runs": {"deployment_id": {"any_": [train["id"]]}}}).json()


def test_the_stack_comes_up_trains_through_the_worker_and_serves_the_promoted_model(stack):
    api, serve = stack["api"], stack["serve"]
    assert httpx.get(f"{api}/health", timeout=10).json() is True
    names = {(d["name"], d["work_pool_name"]) for d in httpx.post(f"{api}/deployments/filter", json={}).json()}
    assert {("train", "llmops"), ("monitor", "llmops"), ("retrain", "llmops")} <= names

    # bootstrap started the first (tiny) training run; only the worker on pool "llmops" can run it
    runs = _wait("the first training run completes", lambda: [
        r for r in _training_runs(api) if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")], timeout=900, every=5)
    assert runs[0]["state_type"] == "COMPLETED", runs[0]["state"]
    assert runs[0]["work_pool_name"] == "llmops"
    # the Prefect server keeps its state in the stack's PostgreSQL
    rows = sh(*stack["compose"], "exec", "-T", "db", "psql", "-U", "prefect", "-d", "prefect", "-tAc",
              f"select state_type from flow_run where id = '{runs[0]['id']}'", env=stack["env"]).stdout
    assert rows.strip() == "COMPLETED"

    # the model server polls the registry in the object store and loads the promoted version by itself
    health = _wait("the model server serves v1", lambda: (
        lambda r: r.status_code == 200 and r.json())(httpx.get(f"{serve}/health", timeout=10)), timeout=120)
    assert health["model"] == "llmops-tiny" and health["version"] == 1
    answer = httpx.post(f"{serve}/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60,
                        json={"model": "llmops-tiny", "prompt": "Return the", "max_tokens": 4}).json()
    assert answer["model"] == "llmops-tiny:1" and answer["usage"]["completion_tokens"] >= 1
    assert httpx.post(f"{serve}/v1/completions", json={"model": "llmops-tiny", "prompt": "x"}).status_code == 401

    # the run's artifacts link reports with presigned URLs signed for the published store port: the host opens them
    artifacts = httpx.post(f"{api}/artifacts/filter", timeout=10,
                           json={"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}}).json()
    public = f"http://localhost:{stack['env']['S3_PORT']}/"
    links = {m for a in artifacts for m in re.findall(r"http://localhost:\d+/[^\s)\]\"'<>]+", json.dumps(a["data"]))}
    assert links and all(link.startswith(public) for link in links), links
    assert httpx.get(sorted(links)[0], timeout=10).status_code == 200

    # docker stop: SIGTERM to the server, which flushes the captured request to the store and exits 0
    sh(*stack["compose"], "stop", "-t", "60", "model-server", env=stack["env"])
    code = sh("docker", "inspect", "-f", "{{.State.ExitCode}}", f"{PROJECT}_model-server_1").stdout.strip()
    assert code == "0"
    listing = sh(*stack["compose"], "exec", "-T", "worker", "python", "-c",
                 "import json; from llmops.infra.store import open_store; "
                 "print(json.dumps(open_store().list('traffic/llmops-tiny')))", env=stack["env"]).stdout
    assert any(".jsonl" in key for key in json.loads(listing.strip().splitlines()[-1]))
