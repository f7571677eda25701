"""int8 quantization: every Linear converted, the original untouched, save/load round trip, and compress_run's
report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmops.infra.config import CompressConfig, PipelineConfig
from llmops.infra.store import LocalStore, sha256_file
from llmops.models.compression.stage import compress_run, serialized_bytes
from llmops.models.data.snapshot import read_split
from llmops.models.evaluation.scoring import bits_per_byte, score_documents
from llmops.models.model.loading import download_run_model
from llmops.models.model.variants import INT8_FILE, load_int8, quantize_int8, save_int8
from llmops.models.records import TrainRef
from tests.helpers import tiny_model, tiny_tokenizer, train_stdlib_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DynamicInt8Linear = torch.ao.nn.quantized.dynamic.Linear
BLOCK = 32


def train_tiny_run(root: Path) -> tuple[LocalStore, TrainRef, list[str], Path]:
    """A real run: stdlib docstrings ingested, a BPE trained, blocks packed, a tiny Llama trained 60 steps (~5 s)."""
    config = PipelineConfig.from_dict({
        "tokenizer": {"vocab_size": 300},
        "model": {"preset": "tiny"},
        "train": {"max_steps": 60, "max_minutes": None, "batch_size": 8, "block_size": BLOCK, "warmup_steps": 5,
                  "eval_every": 30, "eval_batches": 2, "checkpoint_every": 60, "num_threads": 1},
    })
    done = train_stdlib_run(root, config)
    # scoring cost grows with length
    short = [t for t in read_split(done.store, done.dataset, "test") if len(t) <= 400][:12]
    assert len(short) >= 8
    return done.store, done.run, short, done.cache


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("quant-run"))


@pytest.fixture(scope="module")
def model_and_ids():
    tok = tiny_tokenizer()
    ids = tok(["Return the value of the key if it is in the dictionary, else default."],
              return_tensors="pt")["input_ids"]
    return tiny_model(tok, seed=3), ids


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_every_linear_is_converted_and_the_original_is_untouched(model_and_ids):
    model, ids = model_and_ids
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linear_names = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear}
    assert len(linear_names) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + lm_head

    qmodel = quantize_int8(model)

    converted = {n for n, m in qmodel.named_modules() if isinstance(m, DynamicInt8Linear)}
    assert converted == linear_names
    assert not any(type(m) is torch.nn.Linear for m in qmodel.modules())
    assert all(qmodel.get_submodule(n).weight().dtype == torch.qint8 for n in converted)
    # the original still has float Linears with bit-identical weights
    assert {n for n, m in model.named_modules() if type(m) is torch.nn.Linear} == linear_names
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # int8 is close to fp32 but really is a different computation
    fp32, int8 = _logits(model, ids), _logits(qmodel, ids)
    assert not torch.equal(fp32, int8)
    assert (fp32 - int8).abs().max() < 0.05 * fp32.abs().max()


def test_save_and_load_round_trip_gives_identical_logits(model_and_ids, tmp_path):
    model, ids = model_and_ids
    qmodel = quantize_int8(model)
    model.save_pretrained(tmp_path / "fp32")
    path = save_int8(qmodel, tmp_path / "int8")

    assert path == tmp_path / "int8" / INT8_FILE and path.is_file()
    assert json.loads((tmp_path / "int8" / "quantization.json").read_text()) == {
        "method": "torch.ao.quantization.quantize_dynamic", "dtype": "qint8", "modules": ["torch.nn.Linear"]}
    loaded = load_int8(tmp_path / "fp32", tmp_path / "int8")
    assert not loaded.training
    assert sum(isinstance(m, DynamicInt8Linear) for m in loaded.modules()) == 15
    assert torch.equal(_logits(loaded, ids), _logits(qmodel, ids))


def test_int8_serializes_smaller_than_fp32(model_and_ids):
    model, _ = model_and_ids
    fp32, int8 = serialized_bytes(model), serialized_bytes(quantize_int8(model))
    linear_params = sum(m.weight.numel() for m in model.modules() if type(m) is torch.nn.Linear
                        and m is not model.lm_head)  # the head is tied to the (unquantized) embedding
    assert int8 < fp32
    # the trunk's Linear weights go from 4 bytes to 1: most of that saving must show
    assert fp32 - int8 > 0.5 * 3 * linear_params - 4 * model.lm_head.weight.numel()


def test_compress_run_measures_stores_and_marks_a_faithful_int8_servable(trained):
    store, run, texts, cache = trained
    report = compress_run(store, run, texts, CompressConfig(latency_runs=1), cache)

    assert report is not None and report.variant == "int8"
    assert report.uri == store.uri_for(f"runs/{run.run_id}/int8")
    stored = store.local_path(f"runs/{run.run_id}/int8/{INT8_FILE}")
    assert stored.is_file() and sha256_file(stored) == report.sha256
    assert store.exists(f"runs/{run.run_id}/int8/quantization.json")

    local = download_run_model(store, run, cache)
    fp32 = AutoModelForCausalLM.from_pretrained(local, attn_implementation="sdpa").eval()
    tokenizer = AutoTokenizer.from_pretrained(local)
    assert report.fp32_bytes == serialized_bytes(fp32)
    assert report.int8_bytes < report.fp32_bytes
    assert report.fp32_bits_per_byte == pytest.approx(bits_per_byte(score_documents(fp32, tokenizer, texts)), rel=1e-6)
    # the stored variant, loaded as the registry loads it, is the model that was measured
    int8 = load_int8(local, Path(store.local_path(f"runs/{run.run_id}/int8")))
    assert report.int8_bits_per_byte == pytest.approx(bits_per_byte(score_documents(int8, tokenizer, texts)), rel=1e-6)
    assert report.bpb_increase == pytest.approx(report.int8_bits_per_byte - report.fp32_bits_per_byte, abs=1e-12)
    assert abs(report.bpb_increase) < 0.05 and report.servable
    assert report.fp32_latency_ms > 0 and report.int8_latency_ms > 0


def test_servable_follows_the_allowed_bits_per_byte_increase(trained, tmp_path):
    """A model whose head has one outlier weight: per-tensor int8 rounds the rest of the head to zero."""
    store, run, texts, cache = trained
    model = AutoModelForCausalLM.from_pretrained(download_run_model(store, run, cache)).eval()
    tokenizer = AutoTokenizer.from_pretrained(download_run_model(store, run, cache))
    with torch.no_grad():
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        # hidden dim 0 never reaches the head in fp32 (its norm weight is 0), so the outlier there is
        # harmless in fp32; int8's per-tensor scale, set by the outlier, zeroes every other head weight
        model.model.norm.weight[0] = 0.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[0, 0] = 1000.0
    folder = tmp_path / "outlier"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    hashes = store.upload_dir(folder, "runs/outlier/final")
    outlier_run = run.model_copy(update={"run_id": "outlier", "uri": store.uri_for("runs/outlier/final"),
                                         "sha256": hashes["model.safetensors"]})

    report = compress_run(store, outlier_run, texts, CompressConfig(latency_runs=1, max_bpb_increase=0.05), cache)
    assert report.bpb_increase > 0.05 and not report.servable
    # a tolerance of exactly the measured loss is servable: the flag is "increase <= max_bpb_increase"
    tolerant = compress_run(store, outlier_run, texts,
                            CompressConfig(latency_runs=1, max_bpb_increase=report.bpb_increase), cache)
    assert tolerant.bpb_increase == report.bpb_increase and tolerant.servable


def test_quantize_none_returns_none_and_writes_nothing(trained, tmp_path):
    store, run, texts, _ = trained
    other = LocalStore(tmp_path / "store")
    assert compress_run(other, run, texts, CompressConfig(quantize="none"), tmp_path / "cache") is None
    assert other.list("") == []
