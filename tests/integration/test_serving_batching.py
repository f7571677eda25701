"""The continuous-batching engine under real uvicorn: streaming, logprobs and echo through the openai client, token-id
prompts, per-request seeds inside mixed batches, disconnects and timeouts."""
from __future__ import annotations

import asyncio
import json
import math
import threading
import time

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from llmops.infra.config import ServeConfig
from llmops.infra.store import LocalStore
from llmops.models.model.generation import SamplingParams, complete, score_prompts
from llmops.models.release.registry import Registry
from llmops.models.serving import start_server
from tests.helpers import make_registered_model, tiny_tokenizer

MODEL = "lm"
CFG = ServeConfig(port=0, max_tokens_limit=40, max_n=3, reload_interval_s=0, flush_every=1000, flush_interval_s=60,
                  max_queue=128)
PROMPTS = ["If the", "This module provides", "Return the", "x", "The quick brown fox", "def f", "import os"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("store"))
    make_registered_model(store, MODEL)
    return store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    with start_server(store, MODEL, CFG, tmp_path_factory.mktemp("cache")) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def loaded(store, tmp_path_factory):
    registry = Registry(store, MODEL)
    return registry.load(registry.alias("production"), cache_dir=tmp_path_factory.mktemp("ref"))


def _concurrently(server, bodies: list[dict]) -> list[dict]:
    """Send ``bodies`` at once with the async client: they share the engine's batch."""
    async def run():
        async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
            return await asyncio.gather(*(c.completions.create(model=MODEL, **b) for b in bodies))
    return [r.model_dump() for r in asyncio.run(run())]


def test_concurrent_greedy_requests_match_generate_alone(server, loaded):
    """Rows that join and leave one batch decode exactly as transformers' generate does for each prompt alone."""
    params = SamplingParams(max_new_tokens=12, do_sample=False)
    expected = [complete(loaded.model, loaded.tokenizer, [p], params)[0][0] for p in PROMPTS]
    bodies = [dict(prompt=p, max_tokens=12, temperature=0) for p in PROMPTS]
    got = _concurrently(server, bodies)
    assert [r["choices"][0]["text"] for r in got] == [c.text for c in expected]
    assert [r["usage"]["completion_tokens"] for r in got] == [c.tokens for c in expected]


def test_a_seeded_request_gives_the_same_completion_whatever_shares_its_batch(server, client):
    alone = client.completions.create(model=MODEL, prompt="The", max_tokens=16, temperature=1.0, seed=11, n=2)
    noise = [dict(prompt=p, max_tokens=30, temperature=1.2) for p in PROMPTS]
    mixed = _concurrently(server, noise[:3] + [dict(prompt="The", max_tokens=16, temperature=1.0, seed=11, n=2)]
                          + noise[3:])
    assert [c["text"] for c in mixed[3]["choices"]] == [c.text for c in alone.choices]
    assert alone.choices[0].text != alone.choices[1].text, "each choice draws from its own stream"


def test_streaming_through_the_openai_client_gives_the_whole_completion_and_usage(client, store, server):
    whole = client.completions.create(model=MODEL, prompt="Return the", max_tokens=20, temperature=0)
    stream = client.completions.create(model=MODEL, prompt="Return the", max_tokens=20, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) > 1, "the text arrives in pieces"
    assert "".join(texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1 and chunks[0].model == f"{MODEL}:1"
    flushed = httpx.post(f"{server.url}/admin/flush", headers={"Authorization": f"Bearer {server.admin_key}"}).json()
    ids = {json.loads(line)["id"] for key in store.list(f"traffic/{MODEL}")
           for line in store.get_text(key).splitlines() if line.strip()}
    assert flushed["buffered"] == 0 and chunks[0].id in ids, "a streamed response is captured too"


def test_streaming_stops_at_a_stop_string_without_sending_any_of_it(client):
    full = client.completions.create(model=MODEL, prompt="Return the", max_tokens=24, temperature=0).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    expected = full[:full.find(stop)]
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Return the", max_tokens=24, temperature=0, stop=[stop], stream=True) if c.choices)
    assert streamed == expected


def test_logprobs_give_each_token_its_top_alternatives(client, loaded):
    out = client.completions.create(model=MODEL, prompt="Return the", max_tokens=6, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == out.choices[0].text
    for logprob, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) <= 3 and max(top.values()) == pytest.approx(logprob, abs=1e-4), "greedy takes the top token"
        assert logprob <= 0 and all(v <= 0 for v in top.values())
    assert lp.text_offset[0] == len("Return the")


def test_echo_with_logprobs_scores_the_prompt_as_lm_eval_asks(client, loaded):
    """lm-eval-harness' loglikelihood requests: echo=true, logprobs=1, max_tokens=0."""
    prompt = "This module provides a way to"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    choice = out.choices[0]
    choice_lp = choice.logprobs
    ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert choice.text == prompt and len(choice_lp.token_logprobs) == len(ids)
    assert out.usage.completion_tokens == 0 and out.usage.prompt_tokens == len(ids)
    reference = score_prompts(loaded.model, loaded.tokenizer, [prompt])[0]
    assert -sum(choice_lp.token_logprobs) / len(ids) == pytest.approx(reference.mean_nll, abs=1e-4)
    with_one = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, echo=True, logprobs=1)
    assert with_one.choices[0].logprobs.token_logprobs[:len(ids)] == pytest.approx(choice_lp.token_logprobs, abs=1e-4)
    assert len(with_one.choices[0].logprobs.tokens) == len(ids) + 1


def test_token_id_prompts_answer_like_their_text(client):
    tokenizer = tiny_tokenizer()
    ids = tokenizer("Return the", add_special_tokens=False)["input_ids"]
    by_text = client.completions.create(model=MODEL, prompt="Return the", max_tokens=8, temperature=0)
    by_ids = client.completions.create(model=MODEL, prompt=[ids, ids], max_tokens=8, temperature=0)
    assert [c.text for c in by_ids.choices] == [by_text.choices[0].text] * 2
    assert by_ids.usage.prompt_tokens == 2 * len(ids)


def test_a_client_that_goes_away_frees_its_rows(server):
    engine = server.app.state.engine
    body = {"model": MODEL, "prompt": "The", "max_tokens": 40, "temperature": 1.0}
    with engine.scheduler.paused():
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/completions", json=body, timeout=0.5)
        deadline = time.monotonic() + 10
        while server.app.state.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.app.state.in_flight == 0, "the request is released when its client goes"
    deadline = time.monotonic() + 10
    while (engine.scheduler.queued or engine.scheduler.running) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.scheduler.queued == 0 and engine.scheduler.running == 0


def test_a_stream_whose_client_goes_away_is_cancelled(server):
    engine = server.app.state.engine
    body = {"model": MODEL, "prompt": "The", "max_tokens": 40, "temperature": 1.0, "stream": True}
    with engine.scheduler.paused():
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=10) as response:
            assert response.status_code == 200
        deadline = time.monotonic() + 10
        while server.app.state.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.app.state.in_flight == 0


def test_a_request_past_its_time_limit_ends_with_a_clear_504(store, tmp_path):
    cfg = CFG.model_copy(update={"request_timeout_s": 0.3})
    with start_server(store, MODEL, cfg, tmp_path / "cache") as handle:
        client = OpenAI(base_url=f"{handle.url}/v1", api_key="unused", max_retries=0, timeout=30)
        result: dict = {}

        def call():
            try:
                client.completions.create(model=MODEL, prompt="The", max_tokens=8)
            except openai.APIStatusError as exc:
                result["error"] = exc
        caller = threading.Thread(target=call)
        with handle.app.state.engine.scheduler.paused():  # the engine is busy past the request's time limit
            caller.start()
            time.sleep(0.8)
        caller.join(30)
        error = result["error"]
        assert error.status_code == 504 and "request_timeout_s" in error.message
        assert error.body["code"] == "request_timeout"
        assert client.completions.create(model=MODEL, prompt="The", max_tokens=2).choices, "serving goes on"


def test_prompt_surprisal_comes_from_the_prefill_and_matches_scoring(client, store, server, loaded):
    prompt = "Return the value of the attribute"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0)
    httpx.post(f"{server.url}/admin/flush", headers={"Authorization": f"Bearer {server.admin_key}"})
    records = [json.loads(line) for key in store.list(f"traffic/{MODEL}")
               for line in store.get_text(key).splitlines() if line.strip()]
    record = next(r for r in records if r["id"] == out.id)
    expected = score_prompts(loaded.model, loaded.tokenizer, [prompt])[0].mean_nll
    assert math.isclose(record["features"]["prompt_surprisal"], expected, abs_tol=1e-4)


CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_chat_without_a_template_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "chat template" in info.value.message and info.value.body["code"] == "chat_template_missing"


def test_chat_completions_render_the_template_and_stream(tmp_path):
    store = LocalStore(tmp_path / "store")
    make_registered_model(store, "chat", files={"chat_template.jinja": CHAT_TEMPLATE})
    with start_server(store, "chat", CFG, tmp_path / "cache") as handle:
        client = OpenAI(base_url=f"{handle.url}/v1", api_key="unused", max_retries=0, timeout=60)
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Return the"}]
        rendered = "<system>Be brief.\n<user>Return the\n<assistant>"
        same = client.completions.create(model="chat", prompt=rendered, max_tokens=10, temperature=0)
        chat = client.chat.completions.create(model="chat", messages=messages, max_tokens=10, temperature=0,
                                              logprobs=True, top_logprobs=2)
        assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
        assert chat.choices[0].message.content == same.choices[0].text
        assert chat.usage.prompt_tokens == same.usage.prompt_tokens
        content = chat.choices[0].logprobs.content
        assert "".join(t.token for t in content) == same.choices[0].text and len(content[0].top_logprobs) == 2
        chunks = list(client.chat.completions.create(model="chat", messages=messages, max_tokens=10, temperature=0,
                                                     stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == same.choices[0].text
        assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="chat", messages=messages, tools=[
                {"type": "function", "function": {"name": "f", "parameters": {}}}])
        assert "tools" in info.value.message
