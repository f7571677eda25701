"""Semantic drift: off by default; on, a tiny BERT's embeddings give a signal that moves with the topic of the
prompts."""
from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from transformers import BertConfig, BertModel

from llmops.infra.config import MonitorConfig, PipelineConfig
from llmops.infra.store import open_store
from llmops.infra.traffic.log import write_records
from llmops.monitoring.check import check_store_window
from llmops.monitoring.profile import build_profile
from llmops.monitoring.records import ReferenceProfile
from llmops.monitoring.semantic import SentenceEmbedder, cosine_distance, embedder_for, sample_prompts
from llmops.monitoring.synthetic import synthetic_records, toy_tokenize
from tests.helpers import stdlib_texts, tiny_tokenizer

T0 = datetime(2026, 11, 23, 14, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    """A randomly initialised one-layer BERT (hidden 32) with the tiny BPE tokenizer, saved like a hub model."""
    path = tmp_path_factory.mktemp("encoder")
    tokenizer = tiny_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def records_of(texts: list[str], seed: int, start: datetime = T0) -> list[dict]:
    """Traffic records whose prompts are ``texts`` (the other features synthetic, the same for every set)."""
    records = synthetic_records(len(texts), seed=seed, start=start, spacing_s=1)
    for record, text in zip(records, texts):
        record["prompt"] = text
    return records


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    """Disjoint sets of distinct docstrings (reference, similar) and lists of numbers (different).

    A randomly initialised encoder knows no meaning, only tokens: its embeddings separate texts whose
    tokens differ (numbers against prose), not prose from code. Enough to test the machinery.
    """
    docs = list(dict.fromkeys(t for t in stdlib_texts() if len(t) <= 1500))  # attributes share docstrings
    docs = [docs[i] for i in np.random.default_rng(0).permutation(len(docs))]
    rng = np.random.default_rng(1)
    numbers = [", ".join(str(x) for x in rng.integers(0, 10**6, size=rng.integers(5, 40))) for _ in range(150)]
    assert len(docs) >= 350
    return {"reference": docs[:200], "similar": docs[200:350], "different": numbers}


def test_semantic_drift_is_off_by_default_and_nothing_is_loaded(tmp_path):
    cfg = MonitorConfig()
    assert cfg.semantic_model is None and embedder_for(cfg) is None
    profile = build_profile(synthetic_records(300, seed=1), toy_tokenize, cfg, model_name="lm", model_version=1)
    assert profile.semantic is None and "semantic_distance" not in profile.signals
    assert "semantic_distance" not in profile.skipped, "an optional signal that is off is not a missing one"
    again = ReferenceProfile.from_json(profile.to_json())
    assert again.semantic is None


def test_off_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = ("import sys; from llmops.infra.config import MonitorConfig; "
            "from llmops.monitoring.semantic import embedder_for; from llmops.monitoring.profile import build_profile; "
            "from llmops.monitoring.synthetic import synthetic_records; "
            "assert embedder_for(MonitorConfig()) is None; "
            "build_profile(synthetic_records(200), None, MonitorConfig(), model_name='lm', model_version=1); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_embedder_mean_pools_over_real_tokens_only(encoder):
    embed = SentenceEmbedder(encoder, batch_size=2)
    short, long = "Return the key.", "Open the file and return a stream of its lines, decoded with the given encoding."
    alone = embed([short])
    padded = embed([short, long])  # the short one is padded to the long one's length in this batch
    assert alone.shape == (1, 32) and np.allclose(np.linalg.norm(padded, axis=1), 1.0, atol=1e-5)
    assert np.allclose(alone[0], padded[0], atol=1e-5), "padding must not move an embedding"
    assert not np.allclose(padded[0], padded[1], atol=1e-3)
    assert np.allclose(embed([short, long, short])[2], alone[0], atol=1e-5), "batches of 2 and a remainder"


def test_the_profile_gets_semantic_distance_fitted_on_one_half_and_counted_on_the_other(encoder, texts):
    cfg = MonitorConfig(semantic_model=encoder)
    records = records_of(texts["reference"], seed=1)
    profile = build_profile(records, toy_tokenize, cfg, model_name="lm", model_version=1, embedder=embedder_for(cfg))
    assert profile.semantic.model == encoder and profile.semantic.max_length == cfg.semantic_max_length
    assert len(profile.semantic.centroid) == 32 and np.linalg.norm(profile.semantic.centroid) == pytest.approx(1.0)
    stats = profile.continuous["semantic_distance"].stats
    assert "semantic_distance" in profile.signals and stats.n == profile.count_records == 100
    # the counted half is scored against the other half's centroid: out of sample, so farther than in sample
    embed = SentenceEmbedder(encoder)
    from llmops.monitoring.profile import split_halves

    _, count_rows = split_halves(records)
    counted = embed([records[i]["prompt"] for i in count_rows])
    in_sample = cosine_distance(counted, counted.mean(0) / np.linalg.norm(counted.mean(0)))
    assert stats.mean == pytest.approx(cosine_distance(counted, np.asarray(profile.semantic.centroid)).mean(), rel=1e-5)
    assert stats.mean > in_sample.mean()
    assert ReferenceProfile.from_json(profile.to_json()).semantic == profile.semantic


def test_very_different_prompts_move_semantic_distance_more_than_similar_prompts(encoder, texts, tmp_path):
    cfg = MonitorConfig(semantic_model=encoder, evidently_report=False)
    profile = build_profile(records_of(texts["reference"], seed=1), toy_tokenize, cfg, model_name="lm",
                            model_version=1, embedder=embedder_for(cfg))
    store = open_store()
    reports = {}
    for i, kind in enumerate(("similar", "different")):
        start = T0 + timedelta(hours=i)
        write_records(store, "lm", records_of(texts[kind], seed=2, start=start))
        reports[kind] = check_store_window(store, "lm", start, start + timedelta(hours=1), profile, toy_tokenize, cfg,
                                           tmp_path / kind, embedder=embedder_for(cfg, profile.semantic))
    similar, different = (reports[k].signals["semantic_distance"] for k in ("similar", "different"))
    assert similar.n_current == different.n_current == 150
    assert different.psi > similar.psi and different.effect_size > similar.effect_size
    assert different.current_mean > similar.current_mean
    assert different.status == "alert" and similar.status != "alert"
    # the record features are the same in both windows (same seed): only the prompts differ
    assert reports["similar"].signals["prompt_tokens"].psi == reports["different"].signals["prompt_tokens"].psi


def test_a_window_larger_than_the_sample_embeds_a_uniform_sample_and_says_so(encoder, texts, tmp_path):
    cfg = MonitorConfig(semantic_model=encoder, evidently_report=False, semantic_window_sample=100)
    profile = build_profile(records_of(texts["reference"], seed=1), toy_tokenize, cfg, model_name="lm",
                            model_version=1, embedder=embedder_for(cfg))
    store = open_store()
    write_records(store, "lm", records_of(texts["different"], seed=2))
    report = check_store_window(store, "lm", T0, T0 + timedelta(hours=1), profile, toy_tokenize, cfg,
                                tmp_path / "sampled", embedder=embedder_for(cfg, profile.semantic))
    assert report.n_samples == 150 and report.signals["prompt_tokens"].n_current == 150
    assert report.signals["semantic_distance"].n_current == 100
    assert ("semantic_distance: 100 of 150 prompts embedded "
            "(uniform sample, monitor.semantic_window_sample)") in report.notes
    assert report.signals["semantic_distance"].status == "alert"
    sample, seen = sample_prompts([texts["different"][:70], texts["different"][70:]], 100)
    assert seen == 150 and len(set(sample)) == 100 and set(sample) <= set(texts["different"])
    assert sample_prompts([texts["different"]], 100)[0] == sample, "the sample does not depend on how the stream is cut"


def test_a_profile_with_semantic_distance_checked_with_semantic_drift_off_skips_it_without_loading(
        encoder, texts, tmp_path):
    cfg = MonitorConfig(semantic_model=encoder, evidently_report=False)
    profile = build_profile(records_of(texts["reference"], seed=1), toy_tokenize, cfg, model_name="lm",
                            model_version=1, embedder=embedder_for(cfg))
    store = open_store()
    write_records(store, "lm", records_of(texts["similar"], seed=2))
    moved = tmp_path / "moved-encoder"
    shutil.move(encoder, moved)  # loading it now would fail
    try:
        report = check_store_window(store, "lm", T0, T0 + timedelta(hours=1), profile, toy_tokenize,
                                    MonitorConfig(evidently_report=False), tmp_path / "off")
    finally:
        shutil.move(moved, encoder)
    assert "semantic_distance" not in report.signals
    assert report.skipped["semantic_distance"] == "not computed: monitor.semantic_model is not set for this check"
    assert report.n_samples == 150 and "prompt_tokens" in report.signals


def test_the_window_refuses_an_encoder_other_than_the_profiles(encoder, texts, tmp_path):
    cfg = MonitorConfig(semantic_model=encoder)
    profile = build_profile(records_of(texts["reference"][:120], seed=1), toy_tokenize, cfg, model_name="lm",
                            model_version=1, embedder=embedder_for(cfg))
    other = tmp_path / "other"
    shutil.copytree(encoder, other)
    with pytest.raises(ValueError, match="not comparable"):
        check_store_window(open_store(), "lm", T0, T0 + timedelta(hours=1), profile, toy_tokenize, cfg,
                           tmp_path / "x", embedder=SentenceEmbedder(str(other)))


def test_the_config_field_round_trips():
    config = PipelineConfig().with_overrides(["monitor.semantic_model=/models/all-MiniLM-L6-v2"])
    assert config.monitor.semantic_model == "/models/all-MiniLM-L6-v2"
    assert PipelineConfig().monitor.semantic_model is None
