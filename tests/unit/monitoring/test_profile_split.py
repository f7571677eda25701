"""The reference's fit/count split: deterministic halves, and the upward PSI bias it removes, measured."""
from __future__ import annotations

import json

import numpy as np
import pytest

from llmops.infra.config import MonitorConfig
from llmops.monitoring.accumulate import WindowAccumulator, sampling_keys
from llmops.monitoring.batch import take
from llmops.monitoring.check import check_window, measure
from llmops.monitoring.profile import build_profile, profile_from_halves, split_halves
from llmops.monitoring.records import ReferenceProfile
from llmops.monitoring.signals import rows_batch
from llmops.monitoring.synthetic import synthetic_records

CFG = MonitorConfig(evidently_report=False)


def test_halves_are_disjoint_deterministic_and_follow_the_prompt_not_the_id():
    records = synthetic_records(301, seed=1)
    fit, count = split_halves(records)
    assert (fit.size, count.size) == (150, 151) and not set(fit) & set(count)
    renamed = [{**r, "id": f"cmpl-new-{i}"} for i, r in enumerate(records)]  # re-scoring gives new ids
    assert [a.tolist() for a in split_halves(renamed)] == [fit.tolist(), count.tolist()]
    profile = build_profile(records, None, CFG, model_name="lm", model_version=1)
    assert (profile.fit_records, profile.count_records, profile.n_records) == (150, 151, 301)
    assert profile.continuous["prompt_chars"].stats.n == 151 and sum(profile.continuous["prompt_chars"].counts) == 151


def _no_drift_psi(profile: ReferenceProfile, windows: list[list[dict]]) -> dict[str, np.ndarray]:
    """PSI and its noise floor per signal over undrifted windows: shape (windows, 2)."""
    out: dict[str, list] = {}
    for records in windows:
        acc = WindowAccumulator(profile, CFG.ks_window_sample)
        acc.add(rows_batch(records, None, keys=sampling_keys().random(len(records))))
        measured, _ = measure(profile, acc.summaries(), CFG, n_records=len(records), has_tokenizer=False)
        for name, s in measured.items():
            out.setdefault(name, []).append((s.psi, s.psi_noise_floor))
    return {name: np.array(rows) for name, rows in out.items()}


def _zipf_records(n: int, seed: int) -> list[dict]:
    """Synthetic records whose prompt ids follow a heavy-tailed Zipf law over 30k ids, as real BPE tokens do."""
    records, rng = synthetic_records(n, seed=seed), np.random.default_rng(seed)
    for r in records:
        r["prompt_token_ids"] = np.minimum(rng.zipf(1.2, size=len(r["prompt_token_ids"])), 30_000).tolist()
    return records


def test_fitting_and_counting_one_sample_biases_no_drift_psi_upward_and_the_split_does_not():
    # The experiment of docs/monitoring.md: one reference, profiled (a) as one sample that the bins,
    # top-K tokens and common-token set are fitted on AND counted on, (b) split in halves. Then 30
    # undrifted windows. In (a) every token the reference contains is a candidate for "common", so
    # the set covers 95% of the reference's occurrences but far less of any fresh sample's.
    reference = _zipf_records(1000, seed=11)
    batch = rows_batch(reference, None)
    same = profile_from_halves(batch, batch, CFG, model_name="lm", model_version=1, has_tokenizer=False)
    fit, count = split_halves(reference)
    split = profile_from_halves(take(batch, fit), take(batch, count), CFG, model_name="lm", model_version=1,
                                has_tokenizer=False)
    windows = [_zipf_records(300, seed=100 + i) for i in range(30)]
    biased, honest = _no_drift_psi(same, windows), _no_drift_psi(split, windows)
    rare_biased, rare_honest = biased["rare_token_share"], honest["rare_token_share"]
    # (a): ~20x its noise floor, every window past the alert level; (b): at its noise floor, never warns
    assert rare_biased[:, 0].mean() > 10 * rare_biased[:, 1].mean()
    assert np.all(rare_biased[:, 0] - rare_biased[:, 1] >= CFG.psi_alert)
    assert rare_honest[:, 0].mean() < 1.5 * rare_honest[:, 1].mean()
    assert not np.any(rare_honest[:, 0] - rare_honest[:, 1] >= CFG.psi_warn)
    for name in ("prompt_chars", "prompt_surprisal", "completion_logprob", "token_frequency"):
        assert honest[name][:, 0].mean() < 1.5 * honest[name][:, 1].mean()


def test_a_schema_1_profile_is_still_read_and_its_bias_noted(tmp_path):
    profile = build_profile(synthetic_records(400, seed=1), None, CFG, model_name="lm", model_version=1)
    old = json.loads(profile.to_json())
    old["schema_version"] = 1
    for key in ("fit_records", "count_records", "common_token_coverage", "common_tokens"):
        del old[key]
    del old["continuous"]["rare_token_share"]
    del old["categorical"]["token_frequency"]["design_effect"]
    loaded = ReferenceProfile.from_json(json.dumps(old))
    assert loaded.schema_version == 1 and "rare_token_share" not in loaded.signals
    report = check_window(loaded, synthetic_records(200, seed=2), None, CFG, tmp_path)
    assert report.verdict != "alert" and "rare_token_share" not in report.signals
    assert any(note.startswith("reference profile schema 1") for note in report.notes)
    with pytest.raises(ValueError, match="not a valid reference profile: .*schema_version"):
        ReferenceProfile.from_json(json.dumps({**old, "schema_version": 3}))
