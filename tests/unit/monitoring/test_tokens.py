"""Token signals: the common-token set, rare_token_share (ids from the record, else the tokenizer), design effect."""
from __future__ import annotations

import numpy as np
import pytest

from llmops.infra.config import MonitorConfig
from llmops.monitoring import stats
from llmops.monitoring.signals import extract
from llmops.monitoring.synthetic import synthetic_records, toy_tokenize
from llmops.monitoring.tokens import IdLookup, common_token_ids, design_effect, rare_token_share, top_k_ids


def test_common_set_is_the_fewest_ids_reaching_the_coverage():
    ids = np.array([1] * 5 + [2] * 3 + [3] + [4])
    assert common_token_ids(ids, 0.8).tolist() == [1, 2]  # 8 of 10 occurrences
    assert common_token_ids(ids, 0.81).tolist() == [1, 2, 3]  # tie 3/4 broken by the smaller id
    assert common_token_ids(np.zeros(0, np.int64), 0.95).size == 0


def test_rare_token_share_per_record_with_missing_for_no_tokens():
    ids, lengths = np.array([1, 2, 3, 4, 1, 9]), np.array([4, 0, -1, 2])
    share = rare_token_share(ids, lengths, np.array([1, 2]))
    assert share[0] == 0.5 and share[3] == 0.5 and np.isnan(share[1]) and np.isnan(share[2])
    assert IdLookup(np.array([7, 3]), default=-1).codes(np.array([3, 7, 8, 100_000])).tolist() == [1, 0, -1, -1]


def test_token_signals_use_the_records_ids_and_fall_back_to_the_tokenizer():
    records = synthetic_records(4, seed=3)

    def refuse(prompts):
        raise AssertionError("records with prompt_token_ids must not be re-tokenized")

    common = np.array(sorted(set(records[0]["prompt_token_ids"])))
    with_ids = extract(records, refuse, common_tokens=common)
    del records[2]["prompt_token_ids"]
    called = []

    def tokenize(prompts):
        called.append(prompts)
        return toy_tokenize(prompts)

    fallback = extract(records, tokenize, common_tokens=common)
    assert called == [[records[2]["prompt"]]]  # only the record without ids, in one batch call
    assert fallback["token_frequency"].tolist() == with_ids["token_frequency"].tolist()
    assert fallback["rare_token_share"].tolist() == with_ids["rare_token_share"].tolist()
    assert with_ids["rare_token_share"][0] == 0.0 and with_ids["rare_token_share"][1:].min() > 0


def test_unfamiliar_vocabulary_raises_rare_token_share_at_the_same_length(tmp_path):
    from llmops.monitoring.check import check_window
    from llmops.monitoring.profile import build_profile
    from llmops.monitoring.synthetic import TrafficShape

    cfg = MonitorConfig(evidently_report=False)
    profile = build_profile(synthetic_records(1000, seed=1), None, cfg, model_name="lm", model_version=1)
    window = synthetic_records(300, TrafficShape(vocab_offset=60), seed=2)  # same lengths, a shifted vocabulary
    report = check_window(profile, window, None, cfg, tmp_path)
    assert report.signals["rare_token_share"].status == "alert"
    assert report.signals["prompt_tokens"].status == "ok"
    assert report.signals["rare_token_share"].current_mean > 3 * report.signals["rare_token_share"].reference_mean


def test_top_k_ids_ranks_by_count_then_id():
    assert top_k_ids(np.array([5, 5, 3, 3, 9, 1]), 3).tolist() == [3, 5, 1]


def test_design_effect_is_one_for_independent_tokens_and_large_for_clustered_ones():
    rng = np.random.default_rng(0)
    lengths = np.full(400, 30)
    independent = rng.integers(0, 5, size=lengths.sum())
    clustered = np.repeat(rng.integers(0, 5, size=400), 30)  # every prompt repeats one token
    assert design_effect(independent, lengths, 5) == pytest.approx(1.0, abs=0.15)
    assert design_effect(clustered, lengths, 5) == pytest.approx(30.0, rel=0.1)  # = tokens per prompt


def test_the_design_effect_makes_the_chi2_p_value_honest_for_clustered_tokens():
    rng = np.random.default_rng(1)

    def window(n_prompts):  # 5 equally likely tokens, each prompt repeats one of them 30 times
        return np.bincount(np.repeat(rng.integers(0, 5, size=n_prompts), 30), minlength=5)

    ref = window(500)
    raw = [stats.chi2_test(ref, window(150)).p_value for _ in range(200)]
    corrected = [stats.chi2_test(ref, window(150), design_effect=30.0).p_value for _ in range(200)]
    assert np.mean(np.array(raw) < 0.01) > 0.8  # undrifted, yet "significant" nearly always
    assert np.mean(np.array(corrected) < 0.01) < 0.05
