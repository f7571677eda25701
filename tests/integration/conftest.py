"""Integration fixtures: a real Prefect API (one per session) and a real S3-protocol server (moto) on loopback."""
from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch):
    """A fresh bucket; the llmops settings and boto3 point at moto with dummy credentials."""
    import boto3

    from llmops.infra.settings import get_settings

    for key, value in {"LLMOPS_S3_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    name = f"llmops-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def prefect_api():
    """Prefect's test harness: a real API server in a subprocess with a temporary SQLite database."""
    from prefect.testing.utilities import prefect_test_harness

    from tests.helpers import drain_prefect_workers

    drain_prefect_workers()  # senders started against another API (an earlier test's server) must not be reused
    with prefect_test_harness(server_startup_timeout=180):
        yield
