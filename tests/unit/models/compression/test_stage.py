"""The compress stage on a model trained here: every variant stored, measured beside fp32 on the same documents,
servable only when faster, smaller and within its parity gate; a broken variant is refused with its reason."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmops.infra.config import CompressConfig, MonitorConfig, PipelineConfig
from llmops.infra.store import LocalStore, sha256_file
from llmops.models.compression.stage import BATCHES, Parent, assess, compress_run, speeds
from llmops.models.data.snapshot import read_split
from llmops.models.evaluation.scoring import bits_per_byte, score_documents
from llmops.models.model.generation import SamplingParams
from llmops.models.model.loading import download_run_model, load_model
from llmops.models.model.reference import reference_records
from llmops.models.model.variants import make_variant
from llmops.models.records import TrainRef
from llmops.monitoring.check import compare_records
from tests.helpers import stdlib_texts, train_stdlib_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BLOCK = 32
QUICK = dict(decode_tokens=4, speed_runs=1, bootstrap_samples=200)


def train_tiny_run(root: Path) -> tuple[LocalStore, TrainRef, list[str], Path]:
    """A real run: stdlib docstrings ingested, a BPE trained, blocks packed, a tiny Llama trained 60 steps (~5 s)."""
    config = PipelineConfig.from_dict({
        "tokenizer": {"vocab_size": 300},
        "model": {"preset": "tiny"},
        "train": {"max_steps": 60, "max_minutes": None, "batch_size": 8, "block_size": BLOCK, "warmup_steps": 5,
                  "eval_every": 30, "eval_batches": 2, "checkpoint_every": 60, "num_threads": 1},
    })
    done = train_stdlib_run(root, config)
    short = [t for t in read_split(done.store, done.dataset, "test") if len(t) <= 400][:12]  # scoring grows with length
    assert len(short) >= 8
    return done.store, done.run, short, done.cache


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("compress-run"))


def test_every_variant_is_stored_measured_and_judged_on_the_same_documents(trained):
    store, run, texts, cache = trained
    report = compress_run(store, run, texts, CompressConfig(require_faster=False, **QUICK), cache)

    assert [v.variant for v in report.variants] == ["int8", "bf16"]
    assert report.documents == len(texts)
    model_dir = download_run_model(store, run, cache)
    fp32, tokenizer = load_model(model_dir)
    parent_bpb = bits_per_byte(score_documents(fp32, tokenizer, texts))
    assert report.parent_bits_per_byte == pytest.approx(parent_bpb, rel=1e-9)
    assert report.parent_bytes == (model_dir / "model.safetensors").stat().st_size
    for v in report.variants:
        folder = f"runs/{run.run_id}/variants/{v.variant}"
        assert v.uri == store.uri_for(folder)
        weights = next(p for p in store.local_path(folder).iterdir() if p.name.endswith(".safetensors"))
        assert sha256_file(weights) == v.sha256 and weights.stat().st_size == v.bytes
        # the stored variant, loaded as every consumer loads it, is the model that was measured
        stored, _ = load_model(model_dir, v.variant, variant_dir=store.local_path(folder))
        assert v.bits_per_byte == pytest.approx(bits_per_byte(score_documents(stored, tokenizer, texts)), rel=1e-9)
        assert v.bpb_increase == pytest.approx(v.bits_per_byte - parent_bpb, abs=1e-9)
        assert v.ci_low <= v.bpb_increase <= v.ci_high
        assert v.relative_increase_high == pytest.approx(v.ci_high / parent_bpb)
        assert 0 <= v.mean_kl < 0.01 and v.top1_agreement > 0.95
        assert set(v.tokens_per_s) == set(BATCHES) and all(s > 0 for s in v.tokens_per_s.values())
        assert v.parity and v.smaller and v.servable and v.reasons == []
    assert report.serve == max(report.variants, key=lambda v: v.tokens_per_s[1]).variant


def test_a_variant_is_served_only_when_faster_and_auto_picks_the_fastest(trained):
    store, run, texts, cache = trained
    report = compress_run(store, run, texts, CompressConfig(**QUICK), cache)

    for v in report.variants:
        faster = all(v.tokens_per_s[b] > report.parent_tokens_per_s[b] for b in BATCHES)
        assert v.faster == faster
        if not faster:
            assert not v.servable and v.parity is None, "a slower variant is out before its quality is scored"
            assert any(r.startswith("slower than fp32: batch 1") for r in v.reasons)
    servable = report.servable()
    assert report.serve == (max(servable, key=lambda v: v.tokens_per_s[1]).variant if servable else "fp32")


def test_a_broken_variant_is_refused_with_its_reason(trained):
    store, run, texts, cache = trained
    model, tokenizer = load_model(download_run_model(store, run, cache))
    cfg = CompressConfig(require_faster=False, **QUICK)
    parent = Parent(model, tokenizer, texts, 10**9, speeds(model, tokenizer, texts, cfg))
    broken = make_variant(model, "bf16")
    with torch.no_grad():
        for layer in broken.model.layers:  # every block's output zeroed: embeddings straight to the head
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()

    report = assess("bf16", broken, parent, cfg, uri="memory://broken", sha256="0" * 64, size=1)

    assert report.parity is False and not report.servable
    assert report.bpb_increase > 0.01 * report.bits_per_byte
    (reason,) = report.reasons
    assert "exceeds the +1.00% parity limit" in reason and f"{report.bpb_increase:+.4f}" in reason


def test_no_variants_returns_none_and_writes_nothing(trained, tmp_path):
    store, run, texts, _ = trained
    other = LocalStore(tmp_path / "store")
    assert compress_run(other, run, texts, CompressConfig(variants=[]), tmp_path / "cache") is None
    assert other.list("") == []


def test_configs_from_before_variants_still_load():
    assert CompressConfig.model_validate({"quantize": "int8", "max_bpb_increase": 0.05}).variants == ["int8"]
    assert CompressConfig.model_validate({"quantize": "none", "latency_runs": 5}).variants == []


def test_serving_a_variant_that_passed_its_gate_does_not_read_as_drift(trained, tmp_path):
    """Profiled with int8 (what auto serves), the same prompts served by fp32 read as no drift; a broken model
    does."""
    store, run, _, cache = trained
    model, tokenizer = load_model(download_run_model(store, run, cache))
    int8 = make_variant(model, "int8")
    broken = make_variant(model, "bf16")
    with torch.no_grad():
        for layer in broken.model.layers:
            layer.mlp.down_proj.weight.zero_()
    prompts = list(dict.fromkeys(t[:200] for t in stdlib_texts() if len(t) >= 40))[:360]  # unique: no tied values
    params = SamplingParams(max_new_tokens=6, do_sample=False)
    cfg = MonitorConfig(min_samples=60, domain_classifier=False)

    def records(m, variant, texts):
        return reference_records(m, tokenizer, texts, params=params, model_name="m", version=1, variant=variant,
                                 latency_samples=0)

    # the same traffic served by another model: only the model's own features can move
    reference = records(int8, "int8", prompts)
    tokenize = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
    reports = {name: compare_records(reference, records(m, name, prompts), tokenize, cfg, tmp_path / name)
               for name, m in (("fp32", model), ("broken", broken))}
    verdicts = {name: (r.verdict, r.alerting) for name, r in reports.items()}
    assert verdicts["fp32"][0] == "ok", verdicts
    assert verdicts["broken"][0] == "alert", "the check does see a model that really changed"
