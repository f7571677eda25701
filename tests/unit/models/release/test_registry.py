"""The registry: immutable numbered versions, atomic aliases, rollback, loading fp32 and int8 variants."""
from __future__ import annotations

import threading

import pytest
import torch

from llmops.infra.store import LocalStore
from llmops.models.data.tokenizer import train_bpe
from llmops.models.model.presets import build_config
from llmops.models.model.variants import quantize_int8, save_variant
from llmops.models.records import GateDecision, VersionMetadata
from llmops.models.release.registry import Registry, RegistryError
from llmops.models.training.setup import build_model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tok = train_bpe(["hello world, this is a registry test. " * 20], vocab_size=280)
    config = build_config("tiny", vocab_size=len(tok), context_length=32, bos_token_id=tok.eos_token_id,
                          eos_token_id=tok.eos_token_id)
    model = build_model(config, seed=0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    int8 = folder.parent / "int8"
    save_variant(quantize_int8(model), "int8", int8)
    return folder, int8, model


def test_versions_count_up_and_are_immutable(tmp_path, saved_model):
    folder, _, _ = saved_model
    reg = Registry(LocalStore(tmp_path), "lm")
    assert reg.versions() == []
    metadata = VersionMetadata(run_id="r1", dataset="/store/datasets/d/manifest.json", dataset_sha256="d" * 64,
                               tokenizer_sha256="t" * 64, test_bits_per_byte=2.5,
                               gate=GateDecision(promote=True, reason="first", candidate_bits_per_byte=2.5,
                                                 threshold=3.0, documents=10))
    v1 = reg.register(folder, files={"README.md": "# card"}, metadata=metadata)
    v2 = reg.register(folder)
    assert (v1.version, v2.version) == (1, 2) and reg.versions() == [1, 2]
    assert reg.manifest(1).metadata == metadata and reg.manifest(2).metadata is None
    assert reg.read_file(1, "README.md") == b"# card"
    assert v1.sha256 == reg.manifest(1).files["model.safetensors"]
    with pytest.raises(RegistryError, match="version 1 is already registered; versions are immutable"):
        reg.register(folder, version=1)


def test_concurrent_registrations_never_share_a_version(tmp_path, saved_model):
    folder, _, _ = saved_model
    reg = Registry(LocalStore(tmp_path), "lm")
    claimed: list[int] = []
    threads = [threading.Thread(target=lambda: claimed.append(reg.claim_version())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(1, 9))


def test_a_version_without_manifest_does_not_exist(tmp_path, saved_model):
    store = LocalStore(tmp_path)
    reg = Registry(store, "lm")
    reg.register(saved_model[0])
    store.put_bytes("models/lm/versions/2/model.safetensors", b"crashed before the manifest")
    assert reg.versions() == [1]
    with pytest.raises(RegistryError, match=r"model 'lm' has no version 2 \(versions: 1\)"):
        reg.manifest(2)


def test_promotion_and_rollback_walk_the_alias_history(tmp_path, saved_model):
    reg = Registry(LocalStore(tmp_path), "lm")
    for _ in range(3):
        reg.register(saved_model[0])
    with pytest.raises(RegistryError, match="no 'production' alias to roll back"):
        reg.rollback()
    reg.set_alias("production", 1, "first")
    reg.set_alias("production", 2, "better")
    reg.set_alias("production", 3, "better still")
    assert reg.alias("production") == 3 and reg.resolve("production") == 3
    assert reg.rollback() == (3, 2)
    assert reg.rollback() == (2, 1)
    with pytest.raises(RegistryError, match="at version 1 and has no earlier version"):
        reg.rollback()
    actions = [(e["action"], e["version"]) for e in reg.history()]
    assert actions == [("set", 1), ("set", 2), ("set", 3), ("rollback", 2), ("rollback", 1)]
    with pytest.raises(RegistryError, match="has no version 9"):
        reg.set_alias("production", 9, "typo")
    with pytest.raises(RegistryError, match="no 'staging' alias yet"):
        reg.resolve("staging")


def test_load_fp32_and_int8_variants(tmp_path, saved_model):
    folder, int8, model = saved_model
    reg = Registry(LocalStore(tmp_path / "store"), "lm")
    reg.register(folder, variants={"int8": int8})
    reg.register(folder)
    reg.set_alias("production", 1, "test")
    x = torch.tensor([[1, 2, 3, 4]])
    fp32 = reg.load("production", cache_dir=tmp_path / "cache")
    assert fp32.version == 1 and fp32.variant == "fp32"
    with torch.no_grad():
        assert torch.allclose(fp32.model(x).logits, model(x).logits, atol=1e-5)
        q = reg.load(1, variant="int8", cache_dir=tmp_path / "cache")
        assert (q.model(x).logits - model(x).logits).abs().max() < 0.5
    assert isinstance(q.model.model.layers[0].mlp.up_proj, torch.ao.nn.quantized.dynamic.Linear)
    with pytest.raises(RegistryError, match=r"version 2 has no 'int8' variant \(has \['fp32'\]\)"):
        reg.load(2, variant="int8", cache_dir=tmp_path / "cache")


def test_registering_a_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(RegistryError, match="not a saved model folder"):
        Registry(LocalStore(tmp_path), "lm").register(tmp_path)


def test_a_manifest_written_before_metadata_was_typed_still_reads(tmp_path, saved_model):
    folder, _, _ = saved_model
    store = LocalStore(tmp_path)
    reg = Registry(store, "lm")
    reg.register(folder)
    key = "models/lm/versions/1/manifest.json"
    store.put_json(key, {**store.get_json(key), "metadata": {}, "created_at": "2026-11-23T14:00:00.123456+00:00"})
    manifest = reg.manifest(1)
    assert manifest.metadata is None and manifest.created_at.isoformat() == "2026-11-23T14:00:00.123456+00:00"

