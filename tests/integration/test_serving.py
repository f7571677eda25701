"""The serving app under real uvicorn on 127.0.0.1, driven by the official openai client and httpx."""
from __future__ import annotations

import json
import math
import re
import threading
import time
from datetime import datetime

import httpx
import openai
import pytest
from openai import OpenAI

from llmops.infra.config import ServeConfig
from llmops.infra.store import LocalStore, StoreError
from llmops.models.release.registry import Registry
from llmops.models.serving import start_server
from llmops.models.serving.api import ApiError, CompletionRequest, Served, parse_completion
from llmops.monitoring.signals import extract
from tests.helpers import make_registered_model, tiny_tokenizer

MODEL = "lm"
CFG = ServeConfig(port=0, max_tokens_limit=32, max_n=3, max_prompt_chars=500, reload_interval_s=0,
                  flush_every=1000, flush_interval_s=60)

# The traffic record contract (docs/contracts.md), spelled out independently of the code.
RECORD_KEYS = {"id", "ts", "model", "version", "variant", "prompt", "prompt_token_ids", "params", "completions",
               "features", "x_request_id", "user"}
PARAM_KEYS = {"max_tokens", "temperature", "top_p", "top_k", "n", "stop"}
COMPLETION_KEYS = {"text", "finish_reason", "tokens", "mean_logprob", "mean_entropy"}
FEATURE_KEYS = {"prompt_chars", "prompt_tokens", "bytes_per_token", "prompt_surprisal", "completion_tokens",
                "completion_logprob", "completion_entropy", "stop_reason", "latency_ms"}
PARTITION = re.compile(r"^traffic/(?P<model>[^/]+)/\d{4}/\d{2}/\d{2}/\d{2}/[^/]+\.jsonl$")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return LocalStore(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def server(store, cache_dir):
    make_registered_model(store, MODEL)
    handle = start_server(store, MODEL, CFG, cache_dir)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)


def _admin(handle) -> dict[str, str]:
    return {"Authorization": f"Bearer {handle.admin_key}"}


def _complete(client, **kwargs):
    return client.completions.create(model=kwargs.pop("model", MODEL), **kwargs)


def _traffic(store, model: str) -> list[tuple[str, dict]]:
    """(key, record) of every captured record of ``model``."""
    return [(key, json.loads(line)) for key in store.list(f"traffic/{model}")
            for line in store.get_text(key).splitlines() if line.strip()]


def _wait_for(predicate, what: str, timeout_s: float = 10.0):
    """Poll ``predicate`` until it is truthy (returned) or ``timeout_s`` passes (fails naming ``what``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout_s} s for {what}")


# -- completions ----------------------------------------------------------------------------------
def test_completion_shape_and_usage(client):
    prompt = "Return the path of the file"
    out = _complete(client, prompt=prompt, max_tokens=5, n=2, temperature=1.0, seed=1)
    assert out.object == "text_completion" and out.id.startswith("cmpl-") and out.model == f"{MODEL}:1"
    assert [c.index for c in out.choices] == [0, 1]
    assert all(c.logprobs is None and c.finish_reason in ("stop", "length") for c in out.choices)
    assert out.usage.prompt_tokens == len(tiny_tokenizer()(prompt, add_special_tokens=False)["input_ids"])
    assert out.usage.completion_tokens <= 2 * 5
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_prompt_list_gives_n_choices_per_prompt_in_order(client):
    out = _complete(client, prompt=["If the", "This module"], max_tokens=4, n=2, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.choices[0].text == out.choices[1].text and out.choices[2].text == out.choices[3].text
    tok = tiny_tokenizer()
    assert out.usage.prompt_tokens == sum(len(tok(p, add_special_tokens=False)["input_ids"])
                                          for p in ["If the", "This module"])


def test_max_tokens_is_respected_and_defaults_to_config(client):
    out = _complete(client, prompt="Return the", max_tokens=3, temperature=0)
    assert out.usage.completion_tokens <= 3
    if out.choices[0].finish_reason == "length":
        assert out.usage.completion_tokens == 3
    default = _complete(client, prompt="Return the", temperature=0)
    assert default.usage.completion_tokens <= CFG.default_max_tokens


def test_temperature_zero_is_deterministic(client):
    first = _complete(client, prompt="Return the", max_tokens=8, temperature=0, n=2)
    second = _complete(client, prompt="Return the", max_tokens=8, temperature=0)
    assert first.choices[0].text == first.choices[1].text == second.choices[0].text


def test_seed_makes_sampling_reproducible(client):
    def texts(seed):
        return [c.text for c in _complete(client, prompt="The", max_tokens=8, n=2, seed=seed).choices]

    assert texts(7) == texts(7)
    assert texts(7) != texts(8)


def test_top_k_and_repetition_penalty_via_extra_body(client):
    greedy = _complete(client, prompt="This module provides", max_tokens=8, temperature=0).choices[0].text
    top1 = _complete(client, prompt="This module provides", max_tokens=8, temperature=1.0, seed=3,
                     extra_body={"top_k": 1}).choices[0].text
    assert top1 == greedy  # sampling from the single most likely token is greedy decoding
    penalised = _complete(client, prompt="Return the", max_tokens=8, temperature=0,
                          extra_body={"repetition_penalty": 5})
    assert penalised.choices[0].text != _complete(client, prompt="Return the", max_tokens=8,
                                                  temperature=0).choices[0].text


def test_stop_sequence_truncates_and_reports_stop(client):
    full = _complete(client, prompt="Return the", max_tokens=12, temperature=0).choices[0].text
    assert len(full) >= 6, f"greedy output too short to pick a stop sequence from: {full!r}"
    stop = full[3:5]  # not at the start: what precedes the stop string must survive the cut
    out = _complete(client, prompt="Return the", max_tokens=12, temperature=0, stop=[stop, "\x00never"])
    assert out.choices[0].text == full[:full.find(stop)]
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens < 12


def test_stop_sequence_spanning_the_prompt_end_does_not_stop(client):
    full = _complete(client, prompt="A", max_tokens=12, temperature=0).choices[0].text
    straddling = "A" + full[:1]  # the prompt's last character plus the completion's first
    assert full and straddling not in full, f"this model's output does not suit the test: {full!r}"
    out = _complete(client, prompt="A", max_tokens=12, temperature=0, stop=straddling)
    assert (out.choices[0].text, out.choices[0].finish_reason) == (full, "length")


def test_models_and_health(server, client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL, f"{MODEL}:1"]
    assert client.models.retrieve(f"{MODEL}:1").id == f"{MODEL}:1"
    listed = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert [{k: m[k] for k in ("alias", "version", "variant")} for m in listed] == [
        {"alias": "production", "version": 1, "variant": "fp32"}] * 2
    health = httpx.get(f"{server.url}/health").json()
    assert {k: health[k] for k in ("status", "model", "version", "variant", "alias")} == {
        "status": "ok", "model": MODEL, "version": 1, "variant": "fp32", "alias": "production"}
    assert _complete(client, model=f"{MODEL}:1", prompt="x", max_tokens=1).model == f"{MODEL}:1"


def test_health_answers_while_generation_is_busy(server):
    engine, state = server.app.state.engine, server.app.state
    replies = []
    body = {"model": MODEL, "prompt": "Return the", "max_tokens": 2}
    with engine.scheduler.paused():  # stands for a long generation holding the model
        worker = threading.Thread(target=lambda: replies.append(
            httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)))
        worker.start()
        _wait_for(lambda: state.in_flight == 1, "the completion to be admitted")
        # the completion now waits for the model: /health must not (were it to, it could never answer here)
        health = httpx.get(f"{server.url}/health", timeout=30)
        assert (health.status_code, health.json()["status"]) == (200, "ok")
        assert not replies and state.in_flight == 1, "the completion answered without the model"
    worker.join(30)
    assert [r.status_code for r in replies] == [200], "the completion finishes once the model is free"


def test_logit_bias_and_openai_penalties_steer_greedy_decoding(client):
    tokenizer = tiny_tokenizer()
    forced = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" the"))[0]
    biased = _complete(client, prompt="Return the", max_tokens=6, temperature=0, logit_bias={str(forced): 100})
    assert tokenizer(biased.choices[0].text, add_special_tokens=False)["input_ids"] == [forced] * 6
    banned = _complete(client, prompt="Return the", max_tokens=6, temperature=0, logit_bias={str(forced): -100})
    assert forced not in tokenizer(banned.choices[0].text, add_special_tokens=False)["input_ids"]
    # a presence penalty past any logit gap makes greedy decoding pick a token it has not generated yet
    fresh = _complete(client, prompt="Return the", max_tokens=12, temperature=0, presence_penalty=2,
                      logit_bias={str(forced): 1.5})
    plain = _complete(client, prompt="Return the", max_tokens=12, temperature=0, logit_bias={str(forced): 1.5})
    assert fresh.choices[0].text != plain.choices[0].text
    again = _complete(client, prompt="Return the", max_tokens=12, temperature=0, presence_penalty=2,
                      logit_bias={str(forced): 1.5})
    assert again.choices[0].text == fresh.choices[0].text, "penalties are deterministic"


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, words", [
    ({"prompt": "x" * 501}, openai.BadRequestError, ["prompt", "500"]),
    ({"prompt": ""}, openai.BadRequestError, ["prompt", "empty"]),
    ({"prompt": ["ok", ""]}, openai.BadRequestError, ["prompt[1]", "empty"]),
    ({"prompt": "x", "max_tokens": 33}, openai.BadRequestError, ["max_tokens", "32"]),
    ({"prompt": "x", "n": 4}, openai.BadRequestError, ["n is 4", "3"]),
    ({"prompt": "x", "stream": True, "logprobs": 2}, openai.BadRequestError, ["logprobs", "stream"]),
    ({"prompt": "x", "logprobs": 6}, openai.BadRequestError, ["logprobs"]),
    ({"prompt": "x", "max_tokens": 0}, openai.BadRequestError, ["max_tokens is 0", "echo"]),
    ({"prompt": [[1, 2], [10**6]]}, openai.BadRequestError, ["prompt[1]", "token id"]),
    ({"prompt": "x", "best_of": 3}, openai.BadRequestError, ["best_of"]),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, ["stop", "4"]),
    ({"prompt": "x", "temperature": 2.5}, openai.BadRequestError, ["temperature"]),
    ({"prompt": "x", "extra_body": {"top_k": -1}}, openai.BadRequestError, ["top_k"]),
    ({"prompt": "x", "extra_body": {"temprature": 1}}, openai.BadRequestError, ["temprature"]),
    ({"prompt": [[1, 2], "mixed"]}, openai.BadRequestError, ["prompt", "token ids"]),
    ({"prompt": "x", "presence_penalty": 2.5}, openai.BadRequestError, ["presence_penalty"]),
    ({"prompt": "x", "frequency_penalty": -3}, openai.BadRequestError, ["frequency_penalty"]),
    ({"prompt": "x", "logit_bias": {"dog": 5}}, openai.BadRequestError, ["logit_bias", "'dog'", "token id"]),
    ({"prompt": "x", "logit_bias": {"99999": 5}}, openai.BadRequestError, ["logit_bias", "99999"]),
    ({"prompt": "x", "logit_bias": {"5": 101}}, openai.BadRequestError, ["logit_bias", "[-100, 100]"]),
    ({"prompt": "x", "model": "gpt-4"}, openai.NotFoundError, ["gpt-4", MODEL]),
    ({"prompt": "x", "model": f"{MODEL}:7"}, openai.NotFoundError, [f"{MODEL}:7"]),
])
def test_invalid_requests_fail_naming_the_field(client, kwargs, error, words):
    with pytest.raises(error) as info:
        _complete(client, **kwargs)
    assert all(w in info.value.message for w in words), info.value.message
    assert info.value.body["type"] == "invalid_request_error"


def test_malformed_json_and_unknown_routes_use_openai_error_shape(server):
    bad = httpx.post(f"{server.url}/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
    assert httpx.get(f"{server.url}/v2/nothing").json()["error"]["type"] == "invalid_request_error"


def test_max_tokens_must_fit_the_context():
    cfg = ServeConfig(max_tokens_limit=256)
    request = CompletionRequest(model=MODEL, prompt="x", max_tokens=64)
    with pytest.raises(ApiError, match="context is 64 tokens"):
        parse_completion(request, cfg, Served(MODEL, 1, context_length=64))


# -- no model yet -----------------------------------------------------------------------------------
def test_unavailable_until_an_alias_exists_then_reload(store, cache_dir):
    with start_server(store, "unborn", CFG, cache_dir) as handle:
        health = httpx.get(f"{handle.url}/health")
        assert health.status_code == 503 and "production" in health.json()["reason"]
        reply = httpx.post(f"{handle.url}/v1/completions", json={"model": "unborn", "prompt": "x"})
        assert reply.status_code == 503 and "production" in reply.json()["error"]["message"]
        with pytest.raises(openai.InternalServerError):
            OpenAI(base_url=f"{handle.url}/v1", api_key="unused", max_retries=0).completions.create(
                model="unborn", prompt="x")
        make_registered_model(store, "unborn")
        reloaded = httpx.post(f"{handle.url}/admin/reload", headers=_admin(handle)).json()
        assert reloaded == {"old_version": None, "new_version": 1, "changed": True}
        assert httpx.get(f"{handle.url}/health").json()["version"] == 1


# -- capture ----------------------------------------------------------------------------------------
def _check_contract(record: dict) -> None:
    assert set(record) == RECORD_KEYS and set(record["params"]) == PARAM_KEYS
    assert set(record["features"]) == FEATURE_KEYS
    assert record["id"].startswith("cmpl-") and datetime.fromisoformat(record["ts"]).utcoffset().total_seconds() == 0
    assert record["completions"] and all(set(c) == COMPLETION_KEYS for c in record["completions"])
    assert len(record["completions"]) == record["params"]["n"]
    assert len(record["prompt_token_ids"]) == record["features"]["prompt_tokens"] > 0
    for name, value in record["features"].items():
        if name == "stop_reason":
            assert value in ("stop", "length")
        else:
            assert isinstance(value, (int, float)) and math.isfinite(value), (name, value)
    assert record["features"]["stop_reason"] == record["completions"][0]["finish_reason"]


def test_capture_writes_contract_records_to_the_hour_partition(server, client, store):
    _complete(client, prompt="Capture me", max_tokens=4, n=2, stop="zz", seed=5, user="alice",
              extra_headers={"X-Request-ID": "trace-capture-1"})
    _complete(client, prompt=["Capture list A", "Capture list B"], max_tokens=3, temperature=0)
    flushed = httpx.post(f"{server.url}/admin/flush", headers=_admin(server)).json()
    assert flushed["written"] >= 3 and flushed["buffered"] == 0
    captured = _traffic(store, MODEL)
    assert all(PARTITION.match(key) and PARTITION.match(key)["model"] == MODEL for key, _ in captured)
    records = [r for _, r in captured]
    for record in records:
        _check_contract(record)
    by_prompt = {r["prompt"]: r for r in records}
    single = by_prompt["Capture me"]
    assert {k: single["params"][k] for k in ("max_tokens", "temperature", "top_k", "n", "stop")} == {
        "max_tokens": 4, "temperature": 1.0, "top_k": None, "n": 2, "stop": ["zz"]}
    assert (single["model"], single["version"], single["variant"]) == (MODEL, 1, "fp32")
    assert single["features"]["prompt_chars"] == len("Capture me")
    assert (single["user"], single["x_request_id"]) == ("alice", "trace-capture-1")
    a, b = by_prompt["Capture list A"], by_prompt["Capture list B"]
    assert a["id"] != b["id"] and a["features"]["latency_ms"] == b["features"]["latency_ms"]
    assert a["user"] is None and a["x_request_id"] == b["x_request_id"] and len(a["x_request_id"]) == 32
    extraction = extract(records, tokenize=None)  # the drift monitor reads them without complaint
    assert not extraction.missing and extraction.n_records == len(records)


class FlakyStore(LocalStore):
    """A local store whose traffic writes fail while ``failing`` is set."""

    failing = False

    def put_bytes(self, key, data):
        if self.failing and key.startswith("traffic/"):
            raise StoreError("simulated outage")
        return super().put_bytes(key, data)


def test_store_outage_keeps_records_and_never_fails_requests(tmp_path, cache_dir):
    store = FlakyStore(tmp_path / "flaky")
    make_registered_model(store, "flaky")
    with start_server(store, "flaky", CFG, cache_dir) as handle:
        store.failing = True
        reply = httpx.post(f"{handle.url}/v1/completions", json={"model": "flaky", "prompt": "still works"})
        assert reply.status_code == 200
        failed = httpx.post(f"{handle.url}/admin/flush", headers=_admin(handle))
        assert failed.status_code == 503 and "stay buffered" in failed.json()["error"]["message"]
        assert httpx.get(f"{handle.url}/health").json()["capture"]["buffered"] == 1
        store.failing = False
        assert httpx.post(f"{handle.url}/admin/flush", headers=_admin(handle)).json()["written"] == 1
    assert [r["prompt"] for _, r in _traffic(store, "flaky")] == ["still works"]


def test_buffer_flushes_on_threshold_and_on_stop(tmp_path, cache_dir):
    store = LocalStore(tmp_path / "store")
    make_registered_model(store, "buffered")
    cfg = CFG.model_copy(update={"flush_every": 2})
    handle = start_server(store, "buffered", cfg, cache_dir)
    def post(prompt):
        return httpx.post(f"{handle.url}/v1/completions", json={"model": "buffered", "prompt": prompt})

    post("one"), post("two")
    # threshold reached: the background task flushes
    _wait_for(lambda: len(_traffic(store, "buffered")) == 2, "the threshold flush of 2 records")
    post("three")
    handle.stop()  # graceful stop flushes what is left
    assert sorted(r["prompt"] for _, r in _traffic(store, "buffered")) == ["one", "three", "two"]


# -- reload and variants ------------------------------------------------------------------------------
def test_admin_reload_swaps_version_without_dropping_requests(store, cache_dir):
    make_registered_model(store, "swap", seed=0)
    with start_server(store, "swap", CFG, cache_dir) as handle:
        make_registered_model(store, "swap", seed=1)  # version 2, now production
        statuses, stop = [], threading.Event()

        def hammer():
            while not stop.is_set():
                body = {"model": "swap", "prompt": "Return the", "max_tokens": 4}
                statuses.append(httpx.post(f"{handle.url}/v1/completions", json=body, timeout=30).status_code)

        worker = threading.Thread(target=hammer)
        worker.start()
        _wait_for(lambda: statuses, "a first completion")
        reloaded = httpx.post(f"{handle.url}/admin/reload", headers=_admin(handle)).json()
        assert reloaded == {"old_version": 1, "new_version": 2, "changed": True}
        stop.set()
        worker.join(30)
        assert statuses and set(statuses) == {200}
        assert httpx.get(f"{handle.url}/health").json()["version"] == 2
        gone = httpx.post(f"{handle.url}/v1/completions", json={"model": "swap:1", "prompt": "x"})
        assert gone.status_code == 404
        assert httpx.post(f"{handle.url}/admin/reload", headers=_admin(handle)).json()["changed"] is False


def test_background_poll_picks_up_a_promoted_version(store, cache_dir):
    make_registered_model(store, "polled", seed=0)
    cfg = CFG.model_copy(update={"reload_interval_s": 0.2})
    with start_server(store, "polled", cfg, cache_dir) as handle:
        make_registered_model(store, "polled", seed=1)
        _wait_for(lambda: httpx.get(f"{handle.url}/health").json()["version"] == 2, "the poll to serve version 2")
        Registry(store, "polled").rollback("production")
        _wait_for(lambda: httpx.get(f"{handle.url}/health").json()["version"] == 1, "the poll to serve version 1 again")


def test_int8_variant_serves_and_is_captured(store, cache_dir):
    make_registered_model(store, "quant", int8=True)
    with start_server(store, "quant", CFG.model_copy(update={"variant": "int8"}), cache_dir) as handle:
        health = httpx.get(f"{handle.url}/health").json()
        assert (health["status"], health["variant"]) == ("ok", "int8")
        client = OpenAI(base_url=f"{handle.url}/v1", api_key="unused", max_retries=0)
        out = client.completions.create(model="quant", prompt="Return the", max_tokens=4, temperature=0)
        assert out.usage.completion_tokens <= 4
        assert httpx.post(f"{handle.url}/admin/flush", headers=_admin(handle)).json()["written"] == 1
    (_, record), = _traffic(store, "quant")
    _check_contract(record)
    assert record["variant"] == "int8"


def test_auto_serves_the_variant_that_passed_its_gate_and_fp32_for_a_version_without_one(store, cache_dir):
    make_registered_model(store, "auto", int8=True, serving_variant="int8")
    with start_server(store, "auto", CFG.model_copy(update={"variant": "auto"}), cache_dir) as handle:
        health = httpx.get(f"{handle.url}/health").json()
        assert (health["version"], health["variant"], health["variant_setting"]) == (1, "int8", "auto")
        assert {m["id"]: m["variant"] for m in httpx.get(f"{handle.url}/v1/models").json()["data"]} == {
            "auto": "int8", "auto:1": "int8"}
        make_registered_model(store, "auto", int8=True, seed=1)  # its int8 passed no gate: not chosen
        assert httpx.post(f"{handle.url}/admin/reload", headers=_admin(handle)).status_code == 200
        health = httpx.get(f"{handle.url}/health").json()
        assert (health["version"], health["variant"]) == (2, "fp32")


def test_missing_variant_is_reported_as_unavailable(store, server, cache_dir):
    with start_server(store, MODEL, CFG.model_copy(update={"variant": "int8", "capture": False}), cache_dir) as handle:
        health = httpx.get(f"{handle.url}/health")
        assert health.status_code == 503 and "int8" in health.json()["reason"]
