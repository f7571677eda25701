"""Releasing a real tiny run: the registered version's files and card, the smoke test, and alias moves."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmops.infra.config import PipelineConfig
from llmops.infra.store import LocalStore, sha256_bytes
from llmops.models.compression.stage import compress_run
from llmops.models.data.snapshot import read_split
from llmops.models.evaluation.stage import evaluate_run
from llmops.models.model.generation import SamplingParams, complete
from llmops.models.model.loading import download_run_model
from llmops.models.model.reference import reference_records
from llmops.models.model.variants import INT8_FILE
from llmops.models.records import (
    CompressionReport,
    DatasetRef,
    EvalReport,
    ProfileRef,
    TokenizerRef,
    TrainRef,
    VersionMetadata,
)
from llmops.models.release.registry import Registry, RegistryError
from llmops.models.release.stage import register_candidate, release, smoke_test
from llmops.monitoring.profile import build_profile
from llmops.monitoring.records import ReferenceProfile
from tests.helpers import make_registered_model, tiny_model, tiny_tokenizer, train_stdlib_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAME = "release-lm"
CONFIG = PipelineConfig.from_dict({
    "model_name": NAME,
    "data": {"max_chars": 600},
    "tokenizer": {"vocab_size": 300},
    "model": {"preset": "tiny"},
    "train": {"max_steps": 30, "max_minutes": None, "batch_size": 8, "block_size": 32, "warmup_steps": 5,
              "eval_every": 30, "eval_batches": 2, "checkpoint_every": 30, "num_threads": 1},
    "eval": {"max_docs": 10, "max_new_tokens": 4},
    "gate": {"max_bits_per_byte": 50.0},
    "compress": {"require_faster": False, "decode_tokens": 4, "speed_runs": 1},
    "monitor": {"min_samples": 10},
})


@dataclass
class Candidate:
    store: LocalStore
    cache: Path
    dataset: DatasetRef
    tokenizer: TokenizerRef
    run: TrainRef
    evaluation: EvalReport
    compression: CompressionReport
    profile: str

    def staged_profile(self, version: int) -> ProfileRef:
        """The profile staged in the claimed version's folder, as the build-reference-profile task leaves it."""
        uri, sha = Registry(self.store, NAME).stage_file(version, "reference_profile.json", self.profile)
        parsed = ReferenceProfile.from_json(self.profile)
        return ProfileRef(uri=uri, sha256=sha, model_version=version, records=parsed.n_records, signals=parsed.signals)

    def register(self, version: int, compression: Optional[CompressionReport], profile: Optional[ProfileRef]):
        return register_candidate(self.store, CONFIG, version=version, dataset=self.dataset, tokenizer=self.tokenizer,
                                  run=self.run, evaluation=self.evaluation, compression=compression,
                                  reference_profile=profile,
                                  cache_dir=self.cache)


@pytest.fixture(scope="module")
def candidate(tmp_path_factory) -> Candidate:
    """The pipeline's stages up to registration, for real: ingest, BPE, pack, train, evaluate, compress, profile."""
    done = train_stdlib_run(tmp_path_factory.mktemp("release"), CONFIG, NAME)
    store, cache, dataset, tokenizer, run = done.store, done.cache, done.dataset, done.tokenizer, done.run
    evaluation = evaluate_run(store, run, dataset, CONFIG.eval, CONFIG.gate, NAME, cache)
    compression = compress_run(store, run, read_split(store, dataset, "test")[:10], CONFIG.compress, cache)
    local = download_run_model(store, run, cache)
    model = AutoModelForCausalLM.from_pretrained(local).eval()
    records = reference_records(model, tokenizer, read_split(store, dataset, "validation")[:20],
                                params=SamplingParams(max_new_tokens=4, seed=0), model_name=NAME, version=1)
    tokenize = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
    profile = build_profile(records, tokenize, CONFIG.monitor, model_name=NAME, model_version=1).to_json()
    assert [v.variant for v in compression.servable()] == ["int8", "bf16"], "a 30-step tiny model keeps parity"
    return Candidate(store, cache, dataset, done.tokenizer_ref, run, evaluation, compression, profile)


def version_files(store: LocalStore, version: int) -> set[str]:
    prefix = f"models/{NAME}/versions/{version}/"
    return {k[len(prefix):] for k in store.list(prefix.rstrip("/"))}


def test_register_candidate_fills_the_reserved_version_with_everything(candidate):
    store = candidate.store
    registry = Registry(store, NAME)
    version = registry.claim_version()
    ref = candidate.register(version, candidate.compression, candidate.staged_profile(version))

    assert ref.name == NAME and ref.version == version and registry.versions() == [version]
    assert ref.variants == ["fp32", "bf16", "int8"] and ref.sha256 == candidate.run.sha256
    files = version_files(store, version)
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md", "eval.json", "pipeline_config.yaml", "reference_profile.json", "manifest.json",
            f"variants/int8/{INT8_FILE}", "variants/int8/variant.json", "variants/bf16/model.safetensors",
            "variants/bf16/variant.json"} <= files
    assert registry.read_file(version, "eval.json") == store.get_bytes(store.key_for(candidate.evaluation.uri))
    assert sha256_bytes(registry.read_file(version, "eval.json")) == candidate.evaluation.sha256
    stored_config = yaml.safe_load(registry.read_file(version, "pipeline_config.yaml"))
    assert PipelineConfig.model_validate(stored_config) == CONFIG
    profile = ReferenceProfile.from_json(registry.read_file(version, "reference_profile.json"))
    assert profile == ReferenceProfile.from_json(candidate.profile) and profile.model_name == NAME
    int8_report = candidate.compression.variants[0]
    assert sha256_bytes(registry.read_file(version, f"variants/int8/{INT8_FILE}")) == int8_report.sha256

    assert registry.manifest(version).metadata == VersionMetadata(
        run_id=candidate.run.run_id, dataset=candidate.dataset.uri, dataset_sha256=candidate.dataset.sha256,
        tokenizer_sha256=candidate.tokenizer.sha256, gate=candidate.evaluation.gate,
        test_bits_per_byte=candidate.evaluation.splits["test"].bits_per_byte,
        serving_variant=candidate.compression.serve)
    # both variants load as the server loads them and agree on the next token
    ids = torch.tensor([[0, 5, 9, 17, 42]])
    fp32 = registry.load(version, cache_dir=candidate.cache)
    int8 = registry.load(version, variant="int8", cache_dir=candidate.cache)
    with torch.no_grad():
        a, b = fp32.model(input_ids=ids).logits, int8.model(input_ids=ids).logits
    assert not torch.equal(a, b) and (a - b).abs().max() < 0.05 * a.abs().max()


def test_the_registered_card_carries_the_evaluation(candidate):
    registry = Registry(candidate.store, NAME)
    version = registry.claim_version()
    candidate.register(version, candidate.compression, candidate.staged_profile(version))
    card = registry.read_file(version, "README.md").decode()

    meta = yaml.safe_load(re.match(r"\A---\n(.*?)\n---\n", card, re.S).group(1))
    test = candidate.evaluation.splits["test"]
    (result,) = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == f"{NAME}-v{version}"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {
        "perplexity": round(test.perplexity, 4), "bits_per_byte": round(test.bits_per_byte, 4)}
    assert result["dataset"]["revision"] == candidate.dataset.sha256[:16]
    for title in ("Data lineage", "Training", "Evaluation", "Gate decision", "Compression"):
        assert f"\n## {title}\n" in card
    assert f"`{candidate.run.run_id}`" in card and f"`{candidate.dataset.sha256}`" in card
    gate = candidate.evaluation.gate
    assert gate.promote and f"**promoted** — {gate.reason}" in card
    assert "`serve.variant: auto` serves" in card and "| int8 |" in card


def test_a_profile_is_staged_only_in_a_claimed_unregistered_version_and_registered_only_unchanged(candidate):
    registry = Registry(candidate.store, NAME)
    with pytest.raises(RegistryError, match="was not claimed"):
        registry.stage_file(999, "reference_profile.json", candidate.profile)
    version = registry.claim_version()
    staged = candidate.staged_profile(version)
    candidate.store.put_text(candidate.store.key_for(staged.uri), candidate.profile + " ")  # edited after profiling
    with pytest.raises(RegistryError, match="changed after it was profiled"):
        candidate.register(version, candidate.compression, staged)
    assert version not in registry.versions()
    candidate.register(version, candidate.compression, candidate.staged_profile(version))
    with pytest.raises(RegistryError, match="already registered"):
        registry.stage_file(version, "reference_profile.json", candidate.profile)


def test_variants_that_failed_their_gate_and_a_missing_profile_are_left_out(candidate):
    registry = Registry(candidate.store, NAME)
    version = registry.claim_version()
    failed = [v.model_copy(update={"servable": False, "reasons": ["slower than fp32: batch 1 1.0 vs 2.0 tokens/s"]})
              for v in candidate.compression.variants]
    ref = candidate.register(version, candidate.compression.model_copy(update={"variants": failed, "serve": "fp32"}),
                             None)

    assert ref.variants == ["fp32"]
    files = version_files(candidate.store, version)
    assert not any(f.startswith("variants/") for f in files) and "reference_profile.json" not in files
    assert "no: slower than fp32: batch 1" in registry.read_file(version, "README.md").decode()
    assert registry.manifest(version).metadata.serving_variant == "fp32"
    with pytest.raises(RegistryError, match=f"{NAME} version {version} has no 'int8' variant"):
        registry.load(version, variant="int8", cache_dir=candidate.cache)

    without = registry.claim_version()
    assert candidate.register(without, None, None).variants == ["fp32"]
    assert "## Compression" not in registry.read_file(without, "README.md").decode()


def test_a_registered_version_cannot_be_filled_twice(candidate):
    version = Registry(candidate.store, NAME).claim_version()
    candidate.register(version, None, None)
    with pytest.raises(RegistryError, match=f"{NAME} version {version} is already registered; versions are immutable"):
        candidate.register(version, None, None)


def test_smoke_test_generates_what_the_run_model_generates(candidate):
    registry = Registry(candidate.store, NAME)
    version = registry.claim_version()
    candidate.register(version, None, None)

    samples = smoke_test(candidate.store, NAME, version, candidate.cache)

    local = download_run_model(candidate.store, candidate.run, candidate.cache)
    model, tok = AutoModelForCausalLM.from_pretrained(local).eval(), AutoTokenizer.from_pretrained(local)
    expected = complete(model, tok, ["The"], SamplingParams(max_new_tokens=4, do_sample=False))[0][0]
    assert set(samples) == set(Registry(candidate.store, NAME).manifest(version).variants)
    assert samples["fp32"] == expected.text


def test_smoke_test_fails_a_version_with_broken_weights(tmp_path):
    store = LocalStore(tmp_path / "store")
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "broken")
    tok.save_pretrained(tmp_path / "broken")
    ref = Registry(store, NAME).register(tmp_path / "broken")
    with pytest.raises(RegistryError,
                       match=rf"{NAME} version {ref.version} \(fp32\) failed its smoke test: log-prob nan"):
        smoke_test(store, NAME, ref.version, tmp_path / "cache")
    with pytest.raises(RegistryError, match=f"model '{NAME}' has no version 7"):
        smoke_test(store, NAME, 7, tmp_path / "cache")


def test_release_moves_staging_always_and_production_only_when_promoting(tmp_path):
    store = LocalStore(tmp_path / "store")
    registry = Registry(store, NAME)
    v1, v2, v3 = (make_registered_model(store, NAME, alias=None, seed=s).version for s in (1, 2, 3))

    assert release(store, NAME, v1, promote=False, reason="gate failed") is None
    assert (registry.alias("staging"), registry.alias("production")) == (v1, None)

    assert release(store, NAME, v2, promote=True, reason="gate passed") == v2
    assert (registry.alias("staging"), registry.alias("production")) == (v2, v2)

    assert release(store, NAME, v3, promote=False, reason="not better") == v2
    assert (registry.alias("staging"), registry.alias("production")) == (v3, v2)
    assert registry.history("production")[-1]["reason"] == "gate passed"
    assert [e["version"] for e in registry.history("staging")] == [v1, v2, v3]
    assert registry.history("staging")[-1]["reason"] == "not better"

    with pytest.raises(RegistryError, match=f"model '{NAME}' has no version 9"):
        release(store, NAME, 9, promote=True, reason="typo")
    assert (registry.alias("staging"), registry.alias("production")) == (v3, v2)
