"""Fine-tuning a locally saved model: LoRA learns, only adapters change, the merge is exact, checkpoints resume,
the pipeline runs."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llmops.infra.config import DataConfig, LoraSettings, ModelConfig, TokenizerConfig, TrainConfig
from llmops.infra.store import LocalStore
from llmops.models.data.ingest import ingest
from llmops.models.data.packing import pack_dataset, pack_split
from llmops.models.data.snapshot import read_split
from llmops.models.data.tokenizer import build_tokenizer, load_tokenizer
from llmops.models.model.lora import apply_lora, merge_for_deployment
from llmops.models.model.pretrained import load_pretrained, pretrained_identity, tokenizer_config_for
from llmops.models.training.checkpoint import Checkpointer, TrainingError
from llmops.models.training.loop import read_metrics, train
from llmops.models.training.run import model_config_for, run_training
from tests.helpers import stdlib_texts, tiny_model, tiny_tokenizer
from tests.unit.models.training.test_loop import config
from tests.unit.models.training.test_training_features import CrashAt, crash_at, losses_after

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LORA = LoraSettings(r=8, alpha=16)
CONTEXT = 64


def cycle_texts(words: list[str]) -> list[str]:
    return ["".join(words) * 12] * 40


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny Llama pretrained on one cycle of 8 single-token words, saved with save_pretrained (+ its tokenizer);
    and blocks of the reversed cycle, which it predicts badly: what fine-tuning has to learn."""
    tok = tiny_tokenizer()
    words = [w for w in (tok.decode([i]) for i in range(300, len(tok)))
             if w.startswith(" ") and w[1:].isalpha() and len(tok(w)["input_ids"]) == 1][:8]
    root = tmp_path_factory.mktemp("finetune")
    model = tiny_model(tok, context_length=CONTEXT)
    pretrain = pack_split(cycle_texts(words), tok, 32)
    train(model, pretrain, pretrain[:8],
          config(max_steps=30, lr=1e-2, warmup_steps=3, eval_every=100, checkpoint_every=100),
          Checkpointer(LocalStore(root / "pretrain"), "ck"), root / "pretrain.jsonl")
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root / "base", pack_split(cycle_texts(words[::-1]), tok, 32)


def lora_model(path: Path, seed: int = 0) -> torch.nn.Module:
    """The base with fresh adapters; ``seed`` fixes lora_A's random init (lora_B starts at zero)."""
    torch.manual_seed(seed)
    return apply_lora(load_pretrained(str(path)), LORA)


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory):
    path, blocks = base
    root = tmp_path_factory.mktemp("lora")
    model = lora_model(path)
    cfg = config(max_steps=40, lr=1e-2, warmup_steps=3, checkpoint_every=20, eval_every=20)
    train(model, blocks, blocks[:8], cfg, Checkpointer(LocalStore(root), "ck"), root / "m.jsonl")
    return model, read_metrics(root / "m.jsonl"), LocalStore(root)


def unwrapped(name: str) -> str:
    """A peft parameter name as the base model calls it."""
    return name.replace("base_model.model.", "", 1).replace(".base_layer", "")


def test_lora_learns_the_new_pattern(lora_run):
    _, rows, _ = lora_run
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < 0.5 * first


def test_only_the_adapters_are_trainable_and_change(base, lora_run):
    model, _, _ = lora_run
    saved = load_file(str(base[0] / "model.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    targets = {n.split(".")[-4] for n in trainable}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    for name, p in model.named_parameters():
        if name in trainable:
            continue
        key = unwrapped(name)
        assert torch.equal(p.detach(), saved[key if key in saved else "model.embed_tokens.weight"]), name
    assert all(p.detach().abs().sum() > 0 for n, p in model.named_parameters() if ".lora_B." in n)  # B starts at 0


def test_the_merged_model_equals_base_plus_adapters(lora_run, base, tmp_path):
    model, _, _ = lora_run
    x = torch.from_numpy(base[1][:4].astype(np.int64))
    peft_model = copy.deepcopy(model).eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=x).logits
        q = peft_model.base_model.model.model.layers[0].self_attn.q_proj
        expected_q = (q.base_layer.weight
                      + (q.lora_B["default"].weight @ q.lora_A["default"].weight) * LORA.alpha / LORA.r)
        merged = merge_for_deployment(peft_model)
        assert type(merged).__name__ == "LlamaForCausalLM" and not any("lora" in k for k in merged.state_dict())
        torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, expected_q)
        torch.testing.assert_close(merged(input_ids=x).logits, adapted, rtol=1e-5, atol=1e-5)
        merged.save_pretrained(tmp_path / "merged")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(reloaded(input_ids=x).logits, adapted, rtol=1e-5, atol=1e-5)


def test_lora_checkpoints_hold_only_the_adapters_and_resume_exactly(base, lora_run, tmp_path):
    path, blocks = base
    model, _, store = lora_run
    saved = load_file(store.local_path("ck/step-00000040/model.safetensors"))
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    cfg = config(max_steps=20, lr=1e-2, warmup_steps=3)
    crashed = LocalStore(tmp_path / "crashed")
    with pytest.raises(CrashAt):
        train(lora_model(path), blocks, blocks[:8], cfg, Checkpointer(crashed, "ck"), tmp_path / "c.jsonl",
              crash_at(15))
    # the resumed run's fresh adapters differ: the checkpoint must bring them back
    resumed = train(lora_model(path, seed=123), blocks, blocks[:8], cfg, Checkpointer(crashed, "ck"),
                    tmp_path / "c.jsonl")
    assert resumed.resumed_from_step == 10
    train(lora_model(path), blocks, blocks[:8], cfg, Checkpointer(LocalStore(tmp_path / "s"), "ck"),
          tmp_path / "s.jsonl")
    got, want = losses_after(tmp_path / "c.jsonl", 10), losses_after(tmp_path / "s.jsonl", 10)
    assert sorted(got) == list(range(11, 21)) and got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_a_checkpoint_of_other_adapters_is_refused(base, lora_run):
    _, _, store = lora_run
    other = apply_lora(load_pretrained(str(base[0])), LoraSettings(r=4, target_modules=["q_proj"]))
    optimizer = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad])
    with pytest.raises(TrainingError, match="another train.lora setting"):
        Checkpointer(store, "ck").load(40, other, optimizer, None, torch.device("cpu"))


def test_the_pretrained_identity_follows_the_content(base, tmp_path):
    path, _ = base
    identity = pretrained_identity(str(path))
    assert identity.startswith(f"{path.resolve()}@") and pretrained_identity(str(path)) == identity
    changed = tmp_path / "changed"
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.model.norm.weight.add_(1e-3)
    model.save_pretrained(changed)
    assert pretrained_identity(str(changed)).split("@")[1] != identity.split("@")[1]


def test_a_pretrained_model_brings_its_tokenizer_unless_one_is_named():
    model = ModelConfig(pretrained="/models/base")
    assert tokenizer_config_for(TokenizerConfig(), model) == TokenizerConfig(kind="pretrained", path="/models/base")
    named = TokenizerConfig(kind="pretrained", path="/tokenizers/other")
    assert tokenizer_config_for(named, model) == named
    assert tokenizer_config_for(TokenizerConfig(), ModelConfig()) == TokenizerConfig()


def test_a_block_longer_than_the_pretrained_context_is_refused(base, tmp_path):
    from llmops.models.records import TokenizerRef

    ref = TokenizerRef(uri="/t", sha256="t" * 64, kind="pretrained", vocab_size=400, eos_token_id=0)
    with pytest.raises(TrainingError, match=f"exceeds the context of .* \\({CONTEXT} tokens\\)"):
        model_config_for(ModelConfig(pretrained=str(base[0])), ref, block_size=2 * CONTEXT)


@pytest.fixture(scope="module")
def corpus(base, tmp_path_factory):
    """The stages before training, for a pretrained model: ingest, attach its tokenizer, pack."""
    root = tmp_path_factory.mktemp("pipeline")
    store, cache = LocalStore(root / "store"), root / "cache"
    src = root / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in stdlib_texts()), encoding="utf-8")
    dataset = ingest(DataConfig(sources=[str(src)], max_chars=600), store, model_name="ft", cache_dir=cache)
    tok_cfg = tokenizer_config_for(TokenizerConfig(), ModelConfig(pretrained=str(base[0])))
    tok_ref = build_tokenizer(store, tok_cfg, dataset, [])
    tokenizer = load_tokenizer(store, tok_ref, cache)
    packed = pack_dataset(store, dataset, tok_ref, {s: read_split(store, dataset, s) for s in ("train", "validation")},
                          tokenizer, 32)
    return store, cache, tok_ref, tokenizer, packed


def pipeline_config(**overrides) -> TrainConfig:
    base = dict(max_steps=10, max_minutes=None, batch_size=8, block_size=32, warmup_steps=2, eval_every=10,
                eval_batches=1, checkpoint_every=10, num_threads=1)
    return TrainConfig(**{**base, **overrides})


def test_the_pipeline_fine_tunes_with_lora_and_saves_a_plain_merged_model(base, corpus):
    store, cache, tok_ref, tokenizer, packed = corpus
    model_cfg = ModelConfig(preset="small", pretrained=str(base[0]))  # the preset is ignored
    ref = run_training(store, packed, tok_ref, tokenizer, model_cfg, pipeline_config(lora=LORA), cache)
    assert ref.method == "lora" and ref.base_model == pretrained_identity(str(base[0]))
    assert ref.preflight.trainable_parameters < 0.5 * ref.preflight.parameters
    assert ref.steps == 10 and np.isfinite(ref.final_train_loss)
    final = Path(store.local_path(store.key_for(ref.uri) + "/model.safetensors"))
    weights, original = load_file(str(final)), load_file(str(base[0] / "model.safetensors"))
    assert set(weights) == set(original)  # a plain model: no adapter tensors
    assert torch.equal(weights["model.embed_tokens.weight"], original["model.embed_tokens.weight"])
    assert not torch.equal(weights["model.layers.0.self_attn.q_proj.weight"],
                           original["model.layers.0.self_attn.q_proj.weight"])
    assert AutoModelForCausalLM.from_pretrained(final.parent).num_parameters() == ref.parameters
    assert run_training(store, packed, tok_ref, tokenizer, model_cfg, pipeline_config(lora=LORA),
                        cache) == ref  # reused


def test_the_pipeline_fine_tunes_every_weight_without_lora(base, corpus):
    store, cache, tok_ref, tokenizer, packed = corpus
    ref = run_training(store, packed, tok_ref, tokenizer,
                       ModelConfig(pretrained=str(base[0])), pipeline_config(), cache)
    assert ref.method == "full" and ref.preflight.trainable_parameters == ref.preflight.parameters == ref.parameters
    rows = read_metrics(Path(store.local_path(store.key_for(ref.metrics_uri))))
    assert len(rows) == 10 and rows[-1]["loss"] < rows[0]["loss"]


def test_the_card_names_the_base_model_and_the_method():
    from llmops.models.release.card import render_card
    from tests.unit.models.release.test_card import (
        CONFIG,
        DATASET,
        RUN,
        TOKENIZER,
        evaluation,
        section,
        store_key,
        table_rows,
    )

    run = RUN.model_copy(update={"method": "lora", "base_model": "/models/base@0123456789abcdef"})
    card = render_card(name="card-lm", version=1, config=CONFIG, dataset=DATASET, tokenizer=TOKENIZER, run=run,
                       evaluation=evaluation(), compression=None, store_key=store_key)
    assert "fine-tuned with LoRA (adapters merged) by llmops" in card
    assert dict(table_rows(section(card, "Data lineage"))[1:])["base model"] == (
        "local folder `base`, content `0123456789abcdef`")
