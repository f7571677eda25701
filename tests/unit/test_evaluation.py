"""Evaluation: sliding windows, NLL that matches the model's own loss, bits per byte, and the gate."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infra.config import EvalConfig, GateConfig, GenerationSettings
from models.evaluation import _windows, bits_per_byte, gate, generate_samples, score_documents, summarize
from models.presets import build_config
from models.records import DocScores
from models.tokenizer import train_bpe
from models.training import build_model

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
    assert all(len(w) <= ctx for w, _ in windows)
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
