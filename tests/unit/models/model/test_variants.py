"""Compressed variants: every Linear and Conv1D quantized, the original untouched, saved without pickle, loaded
through the one loader with the logits that were measured, and the variant ``auto`` serves."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from llmops.models.model.loading import load_model
from llmops.models.model.variants import (
    INT8_FILE,
    RECIPE,
    VariantError,
    load_variant,
    make_variant,
    quantize_int8,
    save_variant,
    serving_variant,
)
from tests.helpers import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DynamicInt8Linear = torch.ao.nn.quantized.dynamic.Linear


@pytest.fixture(scope="module")
def model_and_ids():
    tok = tiny_tokenizer()
    ids = tok(["Return the value of the key if it is in the dictionary, else default."],
              return_tensors="pt")["input_ids"]
    return tiny_model(tok, seed=3), ids


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "gpt2", vocab_size=400, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0,
        eos_token_id=0)).eval()


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_every_linear_is_converted_and_the_original_is_untouched(model_and_ids):
    model, ids = model_and_ids
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linear_names = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear}
    assert len(linear_names) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + lm_head

    qmodel = quantize_int8(model)

    converted = {n for n, m in qmodel.named_modules() if isinstance(m, DynamicInt8Linear)}
    assert converted == linear_names
    assert all(qmodel.get_submodule(n).weight().qscheme() == torch.per_channel_affine for n in converted)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    fp32, int8 = _logits(model, ids), _logits(qmodel, ids)
    assert not torch.equal(fp32, int8)
    assert (fp32 - int8).abs().max() < 0.05 * fp32.abs().max()


def test_gpt2_conv1d_blocks_are_quantized_too():
    model = _gpt2()
    conv = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    assert len(conv) == 2 * 4  # c_attn, c_proj, mlp.c_fc, mlp.c_proj per layer
    qmodel = quantize_int8(model)
    converted = {n for n, m in qmodel.named_modules() if isinstance(m, DynamicInt8Linear)}
    assert set(conv) | {"lm_head"} == converted
    ids = torch.randint(0, 400, (2, 12))
    fp32, int8 = _logits(model, ids), _logits(qmodel, ids)
    assert (fp32 - int8).abs().max() < 0.05 * fp32.abs().max()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("variant", ["int8", "bf16"])
def test_saved_without_pickle_and_loaded_through_the_one_loader_with_identical_logits(model_and_ids, tmp_path,
                                                                                     monkeypatch, arch, variant):
    model, ids = model_and_ids if arch == "llama" else (_gpt2(), torch.randint(0, 400, (1, 12)))
    model.save_pretrained(tmp_path / "fp32")
    tiny_tokenizer().save_pretrained(tmp_path / "fp32")
    vmodel = make_variant(model, variant)
    weights = save_variant(vmodel, variant, tmp_path / variant)

    files = {p.name for p in (tmp_path / variant).iterdir()}
    assert weights.name in files and RECIPE in files
    assert not any(name.endswith((".pt", ".bin", ".pth", ".pkl")) for name in files)
    assert json.loads((tmp_path / variant / RECIPE).read_text())["variant"] == variant

    def no_pickle(*args, **kwargs):
        raise AssertionError("a variant must load without torch.load (pickle)")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded, _ = load_model(tmp_path / "fp32", variant, variant_dir=tmp_path / variant)
    assert not loaded.training
    assert torch.equal(_logits(loaded, ids), _logits(vmodel, ids))
    if variant == "bf16":
        assert loaded.dtype == torch.bfloat16
    else:
        assert weights.name == INT8_FILE
        # every Linear weight is stored in one byte per parameter (the embedding stays fp32)
        with safe_open(str(weights), "pt") as f:
            int8 = {k: f.get_tensor(k) for k in f.keys() if k.endswith(".int8_weight")}
        assert len(int8) == sum(type(m).__name__ in ("Linear", "Conv1D") for m in model.modules())
        assert all(t.dtype == torch.int8 for t in int8.values())
        assert weights.stat().st_size < (tmp_path / "fp32" / "model.safetensors").stat().st_size


def test_unknown_or_broken_variants_are_clear_errors(model_and_ids, tmp_path):
    model, _ = model_and_ids
    with pytest.raises(VariantError, match="unknown model variant 'int4'"):
        make_variant(model, "int4")
    model.save_pretrained(tmp_path / "fp32")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VariantError, match="no variant.json"):
        load_variant(tmp_path / "fp32", tmp_path / "empty")
    save_variant(quantize_int8(model), "int8", tmp_path / "int8")
    other = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path / "fp32", num_hidden_layers=3))
    other.save_pretrained(tmp_path / "deeper")
    with pytest.raises(VariantError, match="no int8 weights for layer model.layers.2"):
        load_variant(tmp_path / "deeper", tmp_path / "int8")


def test_auto_serves_the_fastest_variant_that_passed_else_fp32():
    assert serving_variant("auto", ["fp32", "int8", "bf16"], "int8") == "int8"
    assert serving_variant("auto", ["fp32"], None) == "fp32"
    assert serving_variant("auto", ["fp32"], "int8") == "fp32", "a variant the version lacks is never served"
    assert serving_variant("auto", ["fp32", "int8", "bf16"], "int8", "cuda") == "bf16"
    assert serving_variant("auto", ["fp32", "int8"], "int8", "cuda") == "fp32"
    assert serving_variant("int8", ["fp32"], None) == "int8", "an explicit setting is the user's to keep"
