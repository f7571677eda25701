"""Canary rollout for real: production and canary served side by side under uvicorn, traffic through the openai
client, and the canary-check flow on a real Prefect API promoting a good canary and rolling back a broken one."""
from __future__ import annotations

import json
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import torch
from openai import OpenAI
from prefect.settings import PREFECT_API_URL

from llmops.flows.canary import canary_check
from llmops.infra.config import PipelineConfig
from llmops.infra.settings import get_settings
from llmops.infra.store import open_store
from llmops.models.release.registry import Registry
from llmops.models.serving import start_server
from tests.helpers import make_registered_model, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("prefect_api")

NAME = "canary-lm"


def _config(mode: str = "split") -> PipelineConfig:
    return PipelineConfig(model_name=NAME).with_overrides([
        "serve.canary.enabled=true", "serve.canary.share=0.5", f"serve.canary.mode={mode}",
        "serve.canary.min_requests=20", "serve.port=0", "serve.reload_interval_s=0.2", "serve.flush_every=1000",
        "serve.flush_interval_s=60", "serve.max_tokens_limit=16"])


def _register_broken(registry: Registry) -> int:
    """A version whose weights were lost (all zero): it speaks uniformly at random, 'the' as often as anything."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp))
        tokenizer.save_pretrained(Path(tmp))
        return registry.register(Path(tmp)).version


def _traffic(handle, users: int = 60) -> dict[int, int]:
    """One request per user; the versions that answered, counted."""
    client = OpenAI(base_url=f"{handle.url}/v1", api_key="unused", max_retries=0, timeout=60)
    answered: dict[int, int] = {}
    for i in range(users):
        out = client.completions.create(model=NAME, prompt=f"Return the value {i}", max_tokens=8, temperature=0.7,
                                        user=f"user-{i}")
        version = int(out.model.rsplit(":", 1)[1])
        answered[version] = answered.get(version, 0) + 1
    httpx.post(f"{handle.url}/admin/flush", headers={"Authorization": f"Bearer {handle.admin_key}"}, timeout=60)
    return answered


def _wait_for_canary(handle, version) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        canary = httpx.get(f"{handle.url}/health").json().get("canary")
        if (canary or {}).get("version") == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"the server did not start serving canary v{version}")


def _events(name: str, since: datetime) -> list[dict]:
    url = PREFECT_API_URL.value()
    body = {"filter": {"event": {"name": [name]}, "occurred": {"since": since.isoformat()}}, "limit": 50}
    return httpx.post(f"{url}/events/filter", json=body, timeout=30).json()["events"]


def test_a_good_canary_is_promoted_and_a_broken_one_rolled_back():
    config = _config()
    store = open_store()
    registry = Registry(store, NAME)
    make_registered_model(store, NAME)  # v1, production
    good = make_registered_model(store, NAME, alias="canary").version  # the same weights, a new version
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    with start_server(store, NAME, config.serve, get_settings().cache_dir / "serve") as handle:
        _wait_for_canary(handle, good)
        models = {m["id"]: m["alias"] for m in httpx.get(f"{handle.url}/v1/models").json()["data"]}
        assert models == {NAME: "production", f"{NAME}:1": "production", f"{NAME}:{good}": "canary"}
        answered = _traffic(handle)
        assert set(answered) == {1, good} and min(answered.values()) >= 20, answered
        again = _traffic(handle, users=10)  # the same users: sticky sides
        assert sum(again.values()) == 10
        client = OpenAI(base_url=f"{handle.url}/v1", api_key="unused", max_retries=0, timeout=60)
        pinned = client.completions.create(model=f"{NAME}:{good}", prompt="Return the", max_tokens=2, user="user-0")
        assert pinned.model == f"{NAME}:{good}", "name:version addresses the canary whatever the user's side"

        verdict = canary_check(config)
        assert verdict.action == "promote", verdict.reasons
        assert registry.alias("production") == good and registry.alias("canary") is None

        broken = _register_broken(registry)
        registry.set_alias("canary", broken, "test: a broken candidate")
        _wait_for_canary(handle, broken)
        answered = _traffic(handle)
        assert min(answered.values()) >= 20, answered
        records = [json.loads(line) for key in store.list(f"traffic/{NAME}")
                   for line in store.get_text(key).splitlines() if line.strip()]
        assert {r["version"] for r in records} == {1, good, broken}, "every record names the version that answered"

        verdict = canary_check(config)
        assert verdict.action == "rollback"
        assert any(r.startswith("completion_entropy drifted") for r in verdict.reasons), verdict.reasons
        assert registry.alias("production") == good and registry.alias("canary") is None
        assert registry.history("canary")[-1]["action"] == "clear"
        deadline = time.monotonic() + 30
        while httpx.get(f"{handle.url}/health").json().get("canary") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "canary" not in httpx.get(f"{handle.url}/health").json(), "the server stops serving the canary"
    deadline = time.monotonic() + 60
    while not (events := _events("llmops.model.rolled_back", since)) and time.monotonic() < deadline:
        time.sleep(1)
    assert events and events[0]["payload"]["version"] == broken and events[0]["payload"]["reasons"]


def test_a_shadow_canary_answers_a_copy_that_is_captured_but_never_returned():
    config = _config("shadow")
    store = open_store()
    make_registered_model(store, NAME)
    shadow = make_registered_model(store, NAME, alias="canary", seed=1).version
    with start_server(store, NAME, config.serve, get_settings().cache_dir / "serve") as handle:
        _wait_for_canary(handle, shadow)
        answered = _traffic(handle, users=12)
        assert answered == {1: 12}, "production answers every request"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            httpx.post(f"{handle.url}/admin/flush", headers={"Authorization": f"Bearer {handle.admin_key}"})
            records = [json.loads(line) for key in store.list(f"traffic/{NAME}")
                       for line in store.get_text(key).splitlines() if line.strip()]
            if len(records) >= 24:
                break
            time.sleep(0.2)
    copies = [r for r in records if r["id"].endswith("-shadow")]
    assert len(copies) == 12 and {r["version"] for r in copies} == {shadow}
    originals = {r["id"]: r for r in records if not r["id"].endswith("-shadow")}
    assert all(originals[c["id"].removesuffix("-shadow")]["x_request_id"] == c["x_request_id"] for c in copies)
