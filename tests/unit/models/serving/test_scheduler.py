"""The continuous-batching scheduler on a tiny model: rows joining, leaving at once, swaps and draining."""
from __future__ import annotations

import threading

import pytest
import torch

from llmops.models.model.generation import SamplingParams, complete
from llmops.models.release.registry import LoadedModel
from llmops.models.serving.jobs import Job, make_jobs
from llmops.models.serving.scheduler import Scheduler
from tests.helpers import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def loaded():
    tokenizer = tiny_tokenizer()
    return LoadedModel(tiny_model(tokenizer), tokenizer, "lm", 1, "fp32", None)


@pytest.fixture
def scheduler(loaded):
    s = Scheduler(loaded, max_batch=8, max_prefill_tokens=256)
    yield s
    s.stop()


def _submit(scheduler: Scheduler, prompts, params: SamplingParams, **options) -> tuple[list[Job], threading.Event]:
    done = threading.Event()
    jobs: list[Job] = []

    def notify(_):
        if all(j.done for j in jobs):
            done.set()
    jobs.extend(make_jobs(list(prompts), params, 1, timeout_s=60, notify=notify, **options))
    scheduler.submit(jobs)
    return jobs, done


def test_rows_that_end_in_their_prefill_leave_the_running_rows_untouched(scheduler, loaded):
    greedy = SamplingParams(max_new_tokens=12, do_sample=False)
    expected = complete(loaded.model, loaded.tokenizer, ["Return the"], greedy)[0][0].text
    with scheduler.paused():
        long_jobs, long_done = _submit(scheduler, ["Return the"], greedy)
    short = []
    for _ in range(5):  # joining while the long row runs, each done after its first token
        jobs, done = _submit(scheduler, ["If the", "x"], SamplingParams(max_new_tokens=1, do_sample=False))
        short.append((jobs, done))
    for jobs, done in short:
        assert done.wait(30) and all(j.error is None and len(j.tokens) == 1 for j in jobs)
    assert long_done.wait(30) and long_jobs[0].error is None
    assert long_jobs[0].text == expected


def test_max_tokens_zero_scores_the_prompt_without_generating(scheduler):
    jobs, done = _submit(scheduler, ["This module provides"], SamplingParams(max_new_tokens=0, do_sample=False),
                         echo=True, detail=True)
    assert done.wait(30)
    job = jobs[0]
    assert job.error is None and job.tokens == [] and job.finish_reason == "length"
    assert len(job.prompt_lp) == len(job.prompt_ids) and all(lp <= 0 for lp in job.prompt_lp)


def test_a_swap_waits_for_the_running_rows_and_new_rows_meet_the_new_model(scheduler, loaded):
    other = LoadedModel(tiny_model(loaded.tokenizer, seed=3), loaded.tokenizer, "lm", 2, "fp32", None)
    params = SamplingParams(max_new_tokens=10, do_sample=False)
    before, before_done = _submit(scheduler, ["Return the"], params)
    while before[0].version is None:  # admitted: it runs on version 1 to its end
        before_done.wait(0.001)
    assert scheduler.swap(other, timeout_s=30)
    after, after_done = _submit(scheduler, ["Return the"], params)
    assert before_done.wait(30) and after_done.wait(30)
    assert (before[0].version, after[0].version) == (1, 2)
    assert after[0].text == complete(other.model, other.tokenizer, ["Return the"], params)[0][0].text


def test_a_draining_stop_finishes_what_was_queued(loaded):
    s = Scheduler(loaded, max_batch=2, max_prefill_tokens=256)
    with s.paused():
        jobs, done = _submit(s, ["a", "b", "c", "d", "e"], SamplingParams(max_new_tokens=6, do_sample=False))
    s.stop(drain=True, timeout_s=60)
    assert done.is_set() and all(j.error is None and j.finish_reason for j in jobs)


def test_a_gpt2_model_decodes_through_the_scheduler_as_generate_does():
    """GPT-2's absolute positions and its own cache layout go through the same left-padded batch."""
    from transformers import AutoModelForCausalLM

    from llmops.models.model.presets import build_config

    tokenizer = tiny_tokenizer()
    config = build_config("gpt2", vocab_size=len(tokenizer), context_length=64, bos_token_id=tokenizer.eos_token_id,
                          eos_token_id=tokenizer.eos_token_id, overrides={"n_embd": 32, "n_layer": 2, "n_head": 2})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    s = Scheduler(LoadedModel(model, tokenizer, "g", 1, "fp32", None), max_batch=8, max_prefill_tokens=256)
    try:
        prompts = ["If the", "This module provides a", "x", "Return the value"]
        greedy = SamplingParams(max_new_tokens=10, do_sample=False)
        with s.paused():  # submitted apart: the rows may join at different steps
            first, first_done = _submit(s, prompts[:1], greedy)
        rest, rest_done = _submit(s, prompts[1:], greedy)
        assert first_done.wait(30) and rest_done.wait(30)
        expected = [c[0].text for c in complete(model, tokenizer, prompts, greedy)]
        assert [j.text for j in first + rest] == expected
    finally:
        s.stop()
