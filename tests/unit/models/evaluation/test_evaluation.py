"""Evaluation: sliding windows, NLL that matches the model's own loss, bits per byte, and the gate."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from llmops.infra.config import EvalConfig, GateConfig, GenerationSettings, PipelineConfig
from llmops.models.data.tokenizer import train_bpe
from llmops.models.evaluation.gate import gate
from llmops.models.evaluation.scoring import _windows, bits_per_byte, score_documents, summarize
from llmops.models.evaluation.stage import evaluate_run, generate_samples
from llmops.models.model.generation import SamplingParams, complete
from llmops.models.model.presets import build_config
from llmops.models.records import DocScores, Sample
from llmops.models.training.setup import build_model
from tests.helpers import train_stdlib_run

TEXTS = [
    "Return the number of items in the container, or raise an error when it is closed.",
    "Open the file and return a stream; the mode defaults to reading text.",
    "This module provides access to the mathematical functions defined by the C standard.",
] * 4


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXTS * 3, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    config = build_config("tiny", vocab_size=len(tok), context_length=16, bos_token_id=tok.eos_token_id,
                          eos_token_id=tok.eos_token_id)
    return build_model(config, seed=0).eval()


@pytest.mark.parametrize("length, ctx, stride", [(10, 4, 2), (5, 8, 4), (40, 16, 8), (17, 16, 15), (33, 16, 1)])
def test_windows_score_every_target_exactly_once(length, ctx, stride):
    seq = list(range(length))
    windows = _windows(seq, ctx, stride)
    assert all(len(w) == min(ctx, length) for w, _ in windows), "every window uses the whole context it can"
    assert sum(t for _, t in windows) == length - 1
    scored = [tok for w, t in windows for tok in w[len(w) - t:]]
    assert scored == seq[1:]


def test_short_documents_score_like_the_models_own_loss(model, tok):
    text = TEXTS[0][:20]
    ids = [tok.eos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
    assert len(ids) <= 16
    x = torch.tensor([ids])
    with torch.no_grad():
        expected = model(input_ids=x, labels=x).loss.item() * (len(ids) - 1)
    scores = score_documents(model, tok, [text])
    assert scores.nll_nats[0] == pytest.approx(expected, rel=1e-4)
    assert scores.tokens == [len(ids) - 1] and scores.bytes == [len(text.encode())]


def test_batching_and_padding_do_not_change_scores(model, tok):
    one_by_one = [score_documents(model, tok, [t], batch_size=1).nll_nats[0] for t in TEXTS[:3]]
    batched = score_documents(model, tok, TEXTS[:3], batch_size=8).nll_nats
    assert batched == pytest.approx(one_by_one, rel=1e-4)


def test_long_documents_are_scored_with_a_sliding_window(model, tok):
    long = " ".join(TEXTS)
    scores = score_documents(model, tok, [long], stride=8)
    n = len(tok(long, add_special_tokens=False)["input_ids"])
    assert n > 16 and scores.tokens == [n]
    split = summarize("test", scores)
    assert split.perplexity == pytest.approx(math.exp(split.loss))
    assert split.bits_per_byte == pytest.approx(scores.nll_nats[0] / math.log(2) / len(long.encode()))


def reference_nll(model, ids, ctx, stride):
    """Summed NLL of ``ids[1:]`` by the transformers perplexity guide's loop, one window at a time,
    except that the last window reaches back a full context (the guide's starts ``stride`` after the
    previous one, so its tokens get less context than the model allows)."""
    total, scored, prev_end = 0.0, 0, 1
    for begin in range(0, len(ids), stride):
        end = min(begin + ctx, len(ids))
        x = torch.tensor([ids[max(0, end - ctx):end]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
        nll = -logp.gather(-1, x[0, 1:, None])[:, 0]  # nll[j]: -log p(x[j+1] | x[:j+1])
        targets = end - prev_end  # the tokens no earlier window scored
        total += nll[-targets:].sum().item()
        scored += targets
        prev_end = end
        if end == len(ids):
            break
    return total, scored


@pytest.mark.parametrize("stride", [8, 5, 15, 1])
def test_sliding_window_scores_match_a_window_by_window_reference(model, tok, stride):
    texts = [" ".join(TEXTS), TEXTS[2][:28], TEXTS[1][:25]]  # long, a little over the context, short
    ids = [[tok.eos_token_id, *tok(t, add_special_tokens=False)["input_ids"]] for t in texts]
    assert len(ids[0]) > 16 * 4 and 16 < len(ids[1]) < 24 and len(ids[2]) <= 16
    # batch_size 2: windows of different documents and lengths share batches
    scores = score_documents(model, tok, texts, stride=stride, batch_size=2)
    for doc, seq in enumerate(ids):
        expected, scored = reference_nll(model, seq, 16, stride)
        assert scores.tokens[doc] == scored == len(seq) - 1
        assert scores.nll_nats[doc] == pytest.approx(expected, rel=1e-5), texts[doc]
    x = torch.tensor([ids[2]])
    with torch.no_grad():
        plain = model(input_ids=x, labels=x).loss.item() * (len(ids[2]) - 1)
    assert scores.nll_nats[2] == pytest.approx(plain, rel=1e-5), "a short document is one full-context pass"


def docs(nll, nbytes=100):
    return DocScores(nll_nats=list(nll), tokens=[25] * len(nll), bytes=[nbytes] * len(nll))


def test_gate_without_production_uses_the_absolute_bound():
    good = docs([100.0] * 20)  # 100 nats / 100 bytes = 1.44 bits/byte
    assert gate(good, None, GateConfig(max_bits_per_byte=2.0)).promote
    refused = gate(good, None, GateConfig(max_bits_per_byte=1.0))
    assert not refused.promote and "misses the bound 1.0" in refused.reason


def test_gate_promotes_a_clearly_better_candidate_and_refuses_a_tie():
    rng = np.random.default_rng(0)
    production = rng.uniform(80, 120, 200)
    better = docs(production * 0.9)
    decision = gate(better, docs(production), GateConfig(), production_version=3, candidate_version=4)
    assert decision.promote and decision.ci_high < 0 and decision.production_version == 3
    assert decision.candidate_version == 4 and decision.reason.startswith("candidate v4 ")
    assert "vs production v3" in decision.reason and "beats production" in decision.reason
    noisy_tie = docs(production + rng.normal(0, 5, 200))
    tie = gate(noisy_tie, docs(production), GateConfig())
    assert not tie.promote and tie.ci_low < 0 < tie.ci_high and "does not beat" in tie.reason


def test_gate_margin_must_be_cleared_with_confidence():
    production = np.full(100, 100.0)
    slightly_better = docs(production * 0.99 + np.random.default_rng(1).normal(0, 0.1, 100))
    assert gate(slightly_better, docs(production), GateConfig(min_improvement=0.0)).promote
    assert not gate(slightly_better, docs(production), GateConfig(min_improvement=0.05)).promote


def test_gate_refuses_scores_of_different_documents():
    with pytest.raises(ValueError, match="same documents"):
        gate(docs([1.0] * 3), docs([1.0] * 4), GateConfig())


def test_bits_per_byte_is_nats_over_ln2_over_bytes():
    assert bits_per_byte(docs([math.log(2) * 100] * 2)) == pytest.approx(1.0)


def test_samples_cover_every_prompt_and_setting(model, tok):
    cfg = EvalConfig(sample_prompts=["Return the", "Open"], max_new_tokens=4, generations=[
        GenerationSettings(name="greedy"), GenerationSettings(name="top-k", do_sample=True, top_k=5, seed=1)])
    samples = generate_samples(model, tok, cfg)
    assert [(s.setting, s.prompt) for s in samples] == [
        ("greedy", "Return the"), ("greedy", "Open"), ("top-k", "Return the"), ("top-k", "Open")]
    again = generate_samples(model, tok, cfg)
    assert [s.completion for s in samples] == [s.completion for s in again], "seeded sampling is reproducible"


def test_samples_record_the_knobs_that_draw_them_again(model, tok):
    cfg = EvalConfig(sample_prompts=["Return the", "Open"], max_new_tokens=5, generations=[
        GenerationSettings(name="greedy", repetition_penalty=1.3),
        GenerationSettings(name="hot", do_sample=True, temperature=1.7, top_k=20, top_p=0.9, seed=7)])
    samples = generate_samples(model, tok, cfg)
    greedy, hot = samples[0].params, samples[2].params
    assert greedy.model_dump() == dict(max_new_tokens=5, do_sample=False, temperature=1.0, top_k=None, top_p=None,
                                       repetition_penalty=1.3, seed=0)
    assert hot.model_dump() == dict(max_new_tokens=5, do_sample=True, temperature=1.7, top_k=20, top_p=0.9,
                                    repetition_penalty=1.0, seed=7)
    # the report alone redraws them: each setting's prompts, generated together with its params
    for params, group in ((greedy, samples[:2]), (hot, samples[2:])):
        redrawn = complete(model, tok, [s.prompt for s in group], SamplingParams(**params.model_dump()))
        assert [o[0].text for o in redrawn] == [s.completion for s in group]
    assert [Sample.model_validate_json(s.model_dump_json()) for s in samples] == samples
    old = Sample.model_validate({"setting": "greedy", "prompt": "Return the", "completion": " x"})
    assert old.params is None, "reports written before samples carried their params still read back"


def test_evaluation_loads_the_candidate_with_the_configured_attention(tmp_path, monkeypatch):
    config = PipelineConfig.from_dict({
        "model_name": "attn-lm", "data": {"max_chars": 600}, "tokenizer": {"vocab_size": 300},
        "model": {"preset": "tiny", "attention": "eager"},
        "train": {"max_steps": 2, "max_minutes": None, "batch_size": 4, "block_size": 32, "warmup_steps": 1,
                  "eval_every": 2, "eval_batches": 1, "checkpoint_every": 2, "num_threads": 1},
        "eval": {"max_docs": 2, "max_new_tokens": 2, "sample_prompts": ["Return the"],
                 "generations": [{"name": "greedy"}]},
        "gate": {"max_bits_per_byte": 50.0},
    })
    done = train_stdlib_run(tmp_path, config, config.model_name)
    loaded, load = [], AutoModelForCausalLM.from_pretrained  # record what transformers really loads
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **kw: loaded.append(load(*a, **kw)) or loaded[-1])
    evaluate_run(done.store, done.run, done.dataset, config.eval, config.gate, config.model_name, done.cache,
                 attention=config.model.attention)
    assert [m.config._attn_implementation for m in loaded] == ["eager"]
