"""What stands in front of the routes, under real uvicorn: API keys, X-Request-ID, the body limit, the admission
limit (429 with Retry-After), and Prometheus /metrics read back with prometheus-client's parser."""
from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from llmops.infra.config import ServeConfig
from llmops.infra.settings import get_settings
from llmops.infra.store import LocalStore
from llmops.models.serving import start_server
from llmops.models.serving.guard import InsecureBind, check_bind
from tests.helpers import make_registered_model

MODEL = "lm"
CFG = ServeConfig(port=0, reload_interval_s=0, flush_every=1000, flush_interval_s=60, max_body_bytes=4096,
                  max_queue=1, retry_after_s=7)
BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 2}


@pytest.fixture()
def store(tmp_path):
    store = LocalStore(tmp_path / "store")
    make_registered_model(store, MODEL)
    return store


@pytest.fixture()
def keyed(monkeypatch):
    monkeypatch.setenv("LLMOPS_API_KEY", "key-one, key-two")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def samples(url: str, headers: dict) -> dict[str, list]:
    text = httpx.get(f"{url}/metrics", headers=headers).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_without_keys_the_api_is_open_the_admin_routes_are_not_and_every_response_has_a_request_id(store, tmp_path):
    with start_server(store, MODEL, CFG, tmp_path / "cache") as handle:
        answer = httpx.post(f"{handle.url}/v1/completions", json=BODY, headers={"X-Request-ID": "trace-42"})
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "trace-42"
        minted = httpx.get(f"{handle.url}/health").headers["x-request-id"]
        assert len(minted) == 32 and int(minted, 16) >= 0, "a request without one gets a generated id"
        bad = httpx.get(f"{handle.url}/health", headers={"X-Request-ID": "has spaces"}).headers["x-request-id"]
        assert bad != "has spaces", "an id that is unsafe to echo or log is replaced"

        refused = httpx.post(f"{handle.url}/admin/flush")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert refused.headers["www-authenticate"] == "Bearer" and "x-request-id" in refused.headers
        wrong = httpx.post(f"{handle.url}/admin/reload", headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401
        admin = {"Authorization": f"Bearer {handle.admin_key}"}
        assert httpx.post(f"{handle.url}/admin/flush", headers=admin).json()["written"] == 1


def test_with_keys_every_route_but_health_needs_one(store, tmp_path, keyed):
    with start_server(store, MODEL, CFG, tmp_path / "cache") as handle:
        assert httpx.get(f"{handle.url}/health").status_code == 200
        for method, route in [("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/metrics"),
                              ("POST", "/admin/flush")]:
            response = httpx.request(method, f"{handle.url}{route}", json=BODY if method == "POST" else None)
            assert response.status_code == 401, route
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"{handle.url}/v1", api_key="key-three", max_retries=0).completions.create(
                model=MODEL, prompt="hi", max_tokens=1)
        for key in ("key-one", "key-two"):  # either key, through the official client
            done = OpenAI(base_url=f"{handle.url}/v1", api_key=key, max_retries=0).completions.create(
                model=MODEL, prompt="hi", max_tokens=1)
            assert done.choices[0].finish_reason in ("stop", "length")
        assert handle.admin_key == "key-one", "with keys configured, the admin routes take them, nothing minted"


def test_an_oversized_body_is_413_with_or_without_content_length(store, tmp_path):
    with start_server(store, MODEL, CFG, tmp_path / "cache") as handle:
        big = {**BODY, "prompt": "x" * 5000}
        sized = httpx.post(f"{handle.url}/v1/completions", json=big)
        assert sized.status_code == 413 and sized.json()["error"]["code"] == "request_too_large"

        def chunks():
            yield b'{"model": "lm", "prompt": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'

        chunked = httpx.post(f"{handle.url}/v1/completions", content=chunks(),
                             headers={"content-type": "application/json"})
        assert chunked.status_code == 413

        def small():
            yield b'{"model": "lm", "prompt": "hello", '
            yield b'"max_tokens": 2}'

        fits = httpx.post(f"{handle.url}/v1/completions", content=small(), headers={"content-type": "application/json"})
        assert fits.status_code == 200, "a chunked body within the limit reaches the route whole"


def test_beyond_the_admission_limit_requests_get_429_with_retry_after_and_metrics_count_it(store, tmp_path):
    with start_server(store, MODEL, CFG, tmp_path / "cache") as handle:
        engine = handle.app.state.engine
        first: dict = {}
        with engine.scheduler.paused():  # generation waits here: the first request stays admitted
            worker = threading.Thread(target=lambda: first.update(
                r=httpx.post(f"{handle.url}/v1/completions", json=BODY, timeout=60)))
            worker.start()
            deadline = time.monotonic() + 30
            while handle.app.state.in_flight < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            second = httpx.post(f"{handle.url}/v1/completions", json=BODY, timeout=10)
            assert second.status_code == 429 and second.headers["retry-after"] == "7"
            assert second.json()["error"]["code"] == "queue_full"
            in_flight = samples(handle.url, {})["llmops_requests_in_flight"][0].value
        worker.join(60)
        assert first["r"].status_code == 200, "the admitted request completes once generation is free"
        assert in_flight == 1

        metrics = samples(handle.url, {})
        requests = {(s.labels["route"], s.labels["status"]): s.value for s in metrics["llmops_requests"]
                    if s.name == "llmops_requests_total"}
        assert requests[("/v1/completions", "200")] == 1 and requests[("/v1/completions", "429")] == 1
        rejected = {s.labels["reason"]: s.value for s in metrics["llmops_requests_rejected"]
                    if s.name == "llmops_requests_rejected_total"}
        assert rejected == {"queue_full": 1}
        served = metrics["llmops_served_info"][0]
        assert (served.labels["version"], served.labels["variant"], served.value) == ("1", "fp32", 1)
        tokens = [s.value for s in metrics["llmops_completion_tokens"] if s.name == "llmops_completion_tokens_total"]
        assert tokens[0] >= 1
        count = [s.value for s in metrics["llmops_request_seconds"]
                 if s.name == "llmops_request_seconds_count" and s.labels["route"] == "/v1/completions"]
        assert count == [2]
        assert metrics["llmops_capture_backlog_records"][0].value == 1, "the admitted request's record waits"


def test_serving_beyond_loopback_needs_a_key_or_insecure():
    with pytest.raises(InsecureBind, match="LLMOPS_API_KEY"):
        check_bind("0.0.0.0", [], insecure=False)
    check_bind("0.0.0.0", [], insecure=True)
    check_bind("0.0.0.0", ["k"], insecure=False)
    for loopback in ("127.0.0.1", "::1", "localhost"):
        check_bind(loopback, [], insecure=False)
