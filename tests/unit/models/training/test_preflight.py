"""Preflight: parameter and memory arithmetic of known models, refusal before allocating, a warm-up that changes
nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmops.infra.config import DataConfig, DistributedSettings, LoraSettings, ModelConfig, PipelineConfig, TrainConfig
from llmops.infra.store import LocalStore
from llmops.models.data.ingest import ingest
from llmops.models.data.packing import pack_dataset
from llmops.models.data.snapshot import read_split
from llmops.models.data.tokenizer import build_tokenizer, load_tokenizer
from llmops.models.model.presets import build_config
from llmops.models.records import PreflightReport
from llmops.models.release.card import render_card
from llmops.models.training import precision
from llmops.models.training import preflight as pf
from llmops.models.training.checkpoint import Checkpointer
from llmops.models.training.loop import read_metrics, train, warmup_seconds
from tests.helpers import stdlib_texts
from tests.unit.models.release.test_card import (
    COMPRESSION,
    DATASET,
    RUN,
    TOKENIZER,
    evaluation,
    section,
    store_key,
    table_rows,
)
from tests.unit.models.training.test_loop import BLOCK, VOCAB, config, patterned_blocks, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
GPT2_SMALL_PARAMETERS = 124_439_808  # GPT-2 small as published (tied embeddings, vocab 50257, context 1024)


def tiny_config():
    return build_config("tiny", vocab_size=VOCAB, context_length=BLOCK, bos_token_id=0, eos_token_id=0)


def tiny_parameters() -> int:
    """The tiny Llama by hand: tied embedding, per layer q/k/v/o + gate/up/down + 2 RMSNorms, final norm."""
    h, inner, layers = 32, 64, 2
    return VOCAB * h + layers * (4 * h * h + 3 * h * inner + 2 * h) + h


def test_gpt2_small_counts_124m_parameters_on_the_meta_device_without_memory():
    config = build_config("gpt2", vocab_size=50257, context_length=1024, bos_token_id=0, eos_token_id=0)
    model = pf.skeleton(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    report = pf.preflight(model, TrainConfig(batch_size=1, block_size=1024, max_steps=10), CPU, "fp32",
                          np.zeros((4, 1024), np.uint16))
    assert report.parameters == report.trainable_parameters == GPT2_SMALL_PARAMETERS


def test_fp32_adamw_bytes_flops_and_data_of_a_known_model():
    n = tiny_parameters()
    cfg = config(max_steps=50, batch_size=8, grad_accum_steps=2)
    data = patterned_blocks(100)
    report = pf.preflight(pf.skeleton(tiny_config()), cfg, CPU, "fp32", data)
    assert report.parameters == report.trainable_parameters == n == sum(p.numel() for p in tiny_model().parameters())
    assert (report.weights_bytes, report.gradients_bytes, report.optimizer_bytes) == (4 * n, 4 * n, 8 * n)
    assert report.total_bytes == 16 * n + report.activations_bytes
    assert (report.rule_of_thumb_hold_bytes, report.rule_of_thumb_train_bytes) == (4 * n, 24 * n)
    assert report.tokens_per_step == 8 * 2 * BLOCK and report.planned_tokens == 50 * 8 * 2 * BLOCK
    assert report.training_flops == 6 * n * report.planned_tokens
    assert report.chinchilla_tokens == 20 * n and report.available_tokens == 100 * BLOCK
    assert report.fits and report.advice == [] and report.estimated_duration_s is None


def test_lora_counts_only_the_adapters_as_trainable():
    n, r, h, inner = tiny_parameters(), 4, 32, 64
    adapters = 2 * (4 * r * (h + h) + 2 * r * (h + inner) + r * (inner + h))  # q/k/v/o, gate/up, down per layer
    cfg = config(lora=LoraSettings(r=r))
    report = pf.preflight(pf.skeleton(tiny_config(), lora=cfg.lora), cfg, CPU, "fp32", patterned_blocks(16))
    assert report.trainable_parameters == adapters and report.parameters == n + adapters
    assert (report.gradients_bytes, report.optimizer_bytes) == (4 * adapters, 8 * adapters)
    assert report.weights_bytes == 4 * (n + adapters)


def test_activations_shrink_with_checkpointing_and_16_bit_precision():
    acts = lambda precision, ckpt: pf.activation_bytes(tiny_config(), 8, BLOCK, precision, ckpt)  # noqa: E731
    assert acts("fp32", True) < acts("fp32", False) and acts("bf16", False) < acts("fp32", False)


def test_a_measured_step_gives_a_duration_capped_by_the_time_budget():
    report = pf.preflight(pf.skeleton(tiny_config()), config(max_steps=100, grad_accum_steps=2, max_minutes=None),
                          CPU, "fp32", patterned_blocks(16), step_seconds=0.5)
    assert report.estimated_duration_s == pytest.approx(0.5 * 2 * 1.1 * 100)
    capped = pf.preflight(pf.skeleton(tiny_config()), config(max_steps=100, max_minutes=0.5), CPU, "fp32",
                          patterned_blocks(16), step_seconds=1.0)
    assert capped.estimated_duration_s == 30.0 and capped.planned_tokens == 27 * capped.tokens_per_step
    assert capped.training_flops == 6 * capped.parameters * capped.planned_tokens


def test_flops_per_token_counts_weights_and_attention_as_nanogpt_does():
    config = build_config("gpt2", vocab_size=50257, context_length=1024, bos_token_id=0, eos_token_id=0)
    model = pf.skeleton(config)
    # nanoGPT's estimate_mfu: 6N + 12·L·H·Q·T with H·Q = n_embd
    assert pf.flops_per_token(model, 1024) == 6 * GPT2_SMALL_PARAMETERS + 12 * 12 * 768 * 1024


def test_peak_flops_is_known_only_where_it_means_something():
    assert pf.peak_flops(CPU, "fp32") is None and pf.peak_flops(CPU, "bf16") is None
    assert pf.peak_flops(CPU, "fp32", override_tflops=2.5) == 2.5e12
    assert (pf.PEAK_TFLOPS["H100"] == 989.4
            and list(pf.PEAK_TFLOPS).index("H100 PCIe") < list(pf.PEAK_TFLOPS).index("H100"))


def test_metrics_carry_mfu_against_the_configured_peak(tmp_path):
    blocks = patterned_blocks()
    cfg = config(max_steps=4, checkpoint_every=100, eval_every=100, peak_tflops=0.5)
    model = tiny_model()
    per_token = pf.flops_per_token(model, BLOCK)
    train(model, blocks, blocks[:16], cfg, Checkpointer(LocalStore(tmp_path), "ck"), tmp_path / "m.jsonl")
    rows = read_metrics(tmp_path / "m.jsonl")
    assert len(rows) == 4
    for row in rows:
        assert row["mfu"] == pytest.approx(per_token * row["tokens_per_s"] / 0.5e12, rel=1e-6) and 0 < row["mfu"] < 1
    train(tiny_model(), blocks, blocks[:16], config(max_steps=2, checkpoint_every=100, eval_every=100),
          Checkpointer(LocalStore(tmp_path / "cpu"), "ck"), tmp_path / "cpu.jsonl")
    assert all("mfu" not in row for row in read_metrics(tmp_path / "cpu.jsonl")), "no peak known on a CPU: no MFU"


def test_the_warm_up_leaves_weights_rng_and_training_unchanged(tmp_path):
    blocks = patterned_blocks()
    cfg = config(max_steps=12, checkpoint_every=100, eval_every=100)
    model = tiny_model()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = warmup_seconds(model, blocks, cfg, CPU, "fp32")
    assert seconds > 0 and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    train(model, blocks, blocks[:16], cfg, Checkpointer(LocalStore(tmp_path / "a"), "ck"), tmp_path / "a.jsonl")
    train(tiny_model(), blocks, blocks[:16], cfg, Checkpointer(LocalStore(tmp_path / "b"), "ck"), tmp_path / "b.jsonl")
    # as in the kill-and-resume test: CPU kernels are not bitwise reproducible between runs of one process
    assert [r["loss"] for r in read_metrics(tmp_path / "a.jsonl")] == pytest.approx(
        [r["loss"] for r in read_metrics(tmp_path / "b.jsonl")], rel=1e-5, abs=1e-6)
    assert warmup_seconds(tiny_model(), blocks, cfg.model_copy(update={"preflight_steps": 0}), CPU, "fp32") is None


@pytest.fixture(scope="module")
def packed_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("preflight")
    store, cache = LocalStore(root / "store"), root / "cache"
    src = root / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in stdlib_texts()), encoding="utf-8")
    dataset = ingest(DataConfig(sources=[str(src)], max_chars=600), store, model_name="pf", cache_dir=cache)
    tok_ref = build_tokenizer(store, PipelineConfig().tokenizer.model_copy(update={"vocab_size": 300}), dataset,
                              read_split(store, dataset, "train"))
    tokenizer = load_tokenizer(store, tok_ref, cache)
    packed = pack_dataset(store, dataset, tok_ref, {s: read_split(store, dataset, s) for s in ("train", "validation")},
                          tokenizer, BLOCK)
    return store, cache, tok_ref, tokenizer, packed


def test_a_run_that_cannot_fit_fails_before_building_the_model(packed_corpus, monkeypatch):
    from llmops.models.training import run as runs
    from llmops.models.training.run_id import run_id_for

    store, cache, tok_ref, tokenizer, packed = packed_corpus
    monkeypatch.setattr(runs, "build_run_model", lambda *a, **k: pytest.fail("the model was materialised"))
    cfg = TrainConfig(batch_size=4096, block_size=BLOCK, max_steps=10, device="cpu", num_threads=1)
    with pytest.raises(pf.PreflightError) as info:  # before build_run_model: nothing was allocated
        runs.run_training(store, packed, tok_ref, tokenizer, ModelConfig(preset="llama-1b"), cfg, cache)
    message = str(info.value)
    assert "GiB is available" in message and "weights" in message and "activations" in message
    for change in ("train.batch_size to 2048", "train.grad_accum_steps to 2", "train.gradient_checkpointing=true",
                   "smaller model.preset"):
        assert change in message
    assert "LoRA" not in message, "trained from scratch: LoRA would train only adapters on random weights"
    run_id = run_id_for(packed, tok_ref, ModelConfig(preset="llama-1b"), cfg)
    saved = PreflightReport.model_validate(store.get_json(f"runs/{run_id}/preflight.json"))
    assert not saved.fits and saved.parameters > 9e8
    assert not store.list(f"runs/{run_id}/checkpoints")


def test_a_run_records_its_preflight_and_the_card_shows_it(packed_corpus):
    from llmops.models.training.run import run_training

    store, cache, tok_ref, tokenizer, packed = packed_corpus
    cfg = TrainConfig(max_steps=6, max_minutes=None, batch_size=8, block_size=BLOCK, eval_every=6, eval_batches=1,
                      checkpoint_every=6, num_threads=1)
    seen = []
    ref = run_training(store, packed, tok_ref, tokenizer, ModelConfig(preset="tiny"), cfg, cache,
                       on_preflight=seen.append)
    assert seen == [ref.preflight] and ref.preflight.measured_step_s > 0 and ref.preflight.estimated_duration_s > 0
    assert ref.preflight.parameters == ref.parameters and ref.preflight.available_tokens == packed.tokens["train"]
    assert store.get_json(f"runs/{ref.run_id}/preflight.json") == ref.preflight.model_dump(mode="json")
    card = render_card(name="card-lm", version=1, config=PipelineConfig(), dataset=DATASET, tokenizer=TOKENIZER,
                       run=RUN.model_copy(update={"preflight": ref.preflight, "wall_s": 1.5}), evaluation=evaluation(),
                       compression=COMPRESSION, store_key=store_key)
    rows = dict(table_rows(section(card, "Training"))[1:])
    assert "### Preflight" in card
    assert rows["parameters"] == f"{ref.parameters:,} ({ref.parameters:,} trainable)"
    assert rows["training FLOPs (6·N·D)"] == f"{ref.preflight.training_flops:.3e}"
    assert rows["Chinchilla-optimal tokens (20/parameter)"] == f"{20 * ref.parameters:,}"
    assert rows["duration estimated / actual"].endswith("/ 1.5 s")
    assert "4 + 20 B/parameter" in rows["rule of thumb (fp32, Adam)"]


@pytest.mark.parametrize("mode", ["enforce", "warn"])
def test_warn_mode_trains_anyway_and_says_so(packed_corpus, monkeypatch, mode):
    from llmops.models.training.run import run_training

    store, cache, tok_ref, tokenizer, packed = packed_corpus
    monkeypatch.setattr(pf, "available_memory", lambda device: 1000)  # a device with 1000 bytes free
    cfg = TrainConfig(max_steps=2, max_minutes=None, batch_size=8, block_size=BLOCK, eval_every=2, eval_batches=1,
                      checkpoint_every=2, num_threads=1, preflight=mode, preflight_steps=0)
    if mode == "enforce":
        with pytest.raises(pf.PreflightError, match="1000 bytes|0.00 GiB is available"):
            run_training(store, packed, tok_ref, tokenizer, ModelConfig(preset="tiny"), cfg, cache)
        return
    ref = run_training(store, packed, tok_ref, tokenizer, ModelConfig(preset="tiny"), cfg, cache)
    assert ref.steps == 2 and not ref.preflight.fits and ref.preflight.estimated_duration_s is None
    card = render_card(name="card-lm", version=1, config=PipelineConfig(), dataset=DATASET, tokenizer=TOKENIZER,
                       run=RUN.model_copy(update={"preflight": ref.preflight}), evaluation=evaluation(),
                       compression=None, store_key=store_key)
    assert "the run did not fit (train.preflight=warn) in memory" in card
    assert "not measured" in dict(table_rows(section(card, "Training"))[1:])["duration estimated / actual"]


def test_the_fused_loss_holds_one_chunk_of_logits_and_the_report_counts_it():
    wide = build_config("tiny", vocab_size=32768, context_length=BLOCK, bos_token_id=0, eos_token_id=0)
    fused, plain = (pf.activation_bytes(wide, 8, BLOCK, "fp32", False, fused_loss=f) for f in (True, False))
    assert plain - fused > 0.9 * 3 * 8 * BLOCK * 32768 * 4 - 2 * 64 * 32768 * 4
    reports = {f: pf.preflight(pf.skeleton(wide), config(fused_loss=f), CPU, "fp32", patterned_blocks(16))
               for f in (True, False)}
    assert reports[False].activations_bytes - reports[True].activations_bytes == plain - fused
    bf16 = pf.preflight(pf.skeleton(wide), config(fused_loss=True), CPU, "bf16", patterned_blocks(16))
    assert bf16.activations_bytes == pf.activation_bytes(wide, 8, BLOCK, "bf16", False)  # fp32 on CPU only


def refused(monkeypatch, cfg, available, device=CPU, precision="fp32", model=None, **kwargs) -> PreflightReport:
    """The report of a run refused on a device with ``available`` bytes free."""
    monkeypatch.setattr(pf, "available_memory", lambda device: available)
    report = pf.preflight(model or pf.skeleton(tiny_config()), cfg, device, precision, patterned_blocks(16), **kwargs)
    assert not report.fits
    return report


def test_lora_is_advised_only_when_fine_tuning_a_pretrained_model(monkeypatch):
    lora = lambda **kw: [t for t in refused(monkeypatch, **kw).advice if "LoRA" in t]  # noqa: E731
    assert lora(cfg=config(), available=1000) == []
    assert lora(cfg=config(), available=1000, pretrained=True) == [
        "fine-tune with LoRA (train.lora) so gradients and optimizer states cover only the adapters"]
    fsdp = config(distributed=DistributedSettings(nproc_per_node=2, strategy="fsdp"))
    assert "LoRA (train.lora, with train.distributed.strategy=ddp)" in lora(cfg=fsdp, available=1000,
                                                                             pretrained=True)[0]
    with_lora = config(lora=LoraSettings(r=4))
    model = pf.skeleton(tiny_config(), lora=with_lora.lora)
    assert lora(cfg=with_lora, available=1000, model=model, pretrained=True) == []


def _rank_bytes(world: int, checkpointing: bool = False) -> int:
    """One FSDP rank of the tiny model (global batch 2) in bf16: its shard of 16 B/parameter, its slice's
    activations."""
    acts = pf.activation_bytes(tiny_config(), -(-2 // world), BLOCK, "bf16", checkpointing)
    return 16 * tiny_parameters() // world + acts


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_weights_that_do_not_fit_are_advised_to_shard_over_the_fewest_ranks_that_fit(monkeypatch, device):
    available = int(_rank_bytes(3) / pf.USABLE_FRACTION) + 2
    usable = pf.USABLE_FRACTION * available
    assert _rank_bytes(2) > usable >= _rank_bytes(3) and 16 * tiny_parameters() > usable  # 2 ranks too few, 3 fit
    tips = [t for t in refused(monkeypatch, config(batch_size=2), available, torch.device(device), "bf16").advice
            if "fsdp" in t]
    state = f"({16 * tiny_parameters() / pf.GiB:.2f} GiB) with train.distributed.strategy=fsdp over "
    assert tips == [f"shard the weights, gradients and optimizer states {state}" + (
        "3 GPUs (train.distributed.nproc_per_node * train.distributed.nnodes = 3, train.batch_size=3); on fewer GPUs "
        "add train.distributed.fsdp_cpu_offload=true (shards in CPU RAM, slower)" if device == "cuda" else
        "3 nodes (train.distributed.nnodes=3, train.distributed.nproc_per_node=1, train.batch_size=3)")]


def test_sharding_advice_goes_beyond_the_ranks_already_sharding_and_knows_its_limits(monkeypatch):
    available = int(_rank_bytes(4, checkpointing=True) / pf.USABLE_FRACTION) + 2
    assert _rank_bytes(3, checkpointing=True) > pf.USABLE_FRACTION * available
    fsdp = config(batch_size=2, gradient_checkpointing=True, distributed=DistributedSettings(
        nproc_per_node=2, strategy="fsdp"))
    tips = refused(monkeypatch, fsdp, available, torch.device("cuda"), "bf16").advice
    assert [t[t.index("over"):] for t in tips if "fsdp" in t] == [
        "over 4 GPUs (train.distributed.nproc_per_node * train.distributed.nnodes = 4, train.batch_size=4); "
        "on fewer GPUs add train.distributed.fsdp_cpu_offload=true (shards in CPU RAM, slower)"]
    offloaded = fsdp.model_copy(update={"distributed": fsdp.distributed.model_copy(update={"fsdp_cpu_offload": True})})
    report = pf.preflight(pf.skeleton(tiny_config()), offloaded, torch.device("cuda"), "bf16", patterned_blocks(16))
    assert report.total_bytes == report.activations_bytes, "offloaded shards are in host RAM, not on the GPU"
    nowhere = refused(monkeypatch, config(), 1000).advice  # not even one example per rank fits
    assert not any("fsdp" in t for t in nowhere) and any("only a smaller model fits" in t for t in nowhere)
    with_lora = config(lora=LoraSettings(r=4))  # fsdp does not take LoRA
    lora_tips = refused(monkeypatch, with_lora, available, model=pf.skeleton(tiny_config(), lora=with_lora.lora)).advice
    assert not any("fsdp" in t for t in lora_tips) and any("only a smaller model fits" in t for t in lora_tips)


@pytest.mark.parametrize("native, caveat", [
    (True, ""), (False, "; slower than fp32 on this CPU, which lacks native bf16"),
    (None, "; slower than fp32 on CPUs without native bf16 (AVX512-BF16, AMX)")])
def test_bf16_is_advised_on_a_cpu_too_with_the_caveat_that_applies(monkeypatch, native, caveat):
    monkeypatch.setattr(pf, "_native_cpu_bf16", lambda: native)
    cfg = config(fused_loss=False)
    saved = (pf.activation_bytes(tiny_config(), 8, BLOCK, "fp32", False)
             - pf.activation_bytes(tiny_config(), 8, BLOCK, "bf16", False))
    tip = f"set train.precision=bf16 (about {saved / pf.GiB:.2f} GiB less activation memory{caveat})"
    assert tip in refused(monkeypatch, cfg, 1000).advice
    assert f"set train.precision=bf16 (about {saved / pf.GiB:.2f} GiB less activation memory)" in refused(
        monkeypatch, cfg, 1000, torch.device("cuda")).advice
    assert not any("bf16" in t for t in refused(monkeypatch, cfg, 1000, precision="bf16").advice)


def test_bf16_is_not_advised_where_it_would_save_too_little(monkeypatch):
    wide = pf.skeleton(build_config("tiny", vocab_size=32768, context_length=BLOCK, bos_token_id=0, eos_token_id=0))
    # on a CPU bf16 gives up the fused loss: the full logits cost more than the 16-bit blocks save
    assert not any("bf16" in t for t in refused(monkeypatch, config(), 1000, model=wide).advice)
    # the weights dominate what is missing: halving the activations of one example would not matter
    gpt2 = pf.skeleton(build_config("gpt2", vocab_size=50257, context_length=1024, bos_token_id=0, eos_token_id=0))
    tips = refused(monkeypatch, config(batch_size=1, fused_loss=False), 1000, torch.device("cuda"), model=gpt2).advice
    assert not any("bf16" in t for t in tips)


def test_native_cpu_bf16_reads_the_cpu_flags(monkeypatch):
    for text, native in [("flags\t: fpu avx512f avx512_bf16\n", True), ("flags\t: fpu amx_bf16\n", True),
                         ("Features\t: fp asimd bf16\n", True), ("flags\t: fpu avx2 avx512f\n", False), ("", None)]:
        monkeypatch.setattr(precision.Path, "read_text", lambda self, text=text: text)
        precision._cpuinfo.cache_clear()
        assert precision.native_bf16(precision.cpu_flags()) is native
    precision._cpuinfo.cache_clear()


@pytest.mark.parametrize("batch, ranks, advised", [(8, 1, (4, 2)), (7, 1, (1, 7)), (12, 4, (4, 3)), (16, 4, (8, 2)),
                                                   (4, 4, None), (1, 1, None)])
def test_a_smaller_batch_is_advised_only_as_a_multiple_of_the_ranks(monkeypatch, batch, ranks, advised):
    cfg = config(batch_size=batch, distributed=DistributedSettings(nproc_per_node=ranks))
    tips = [t for t in refused(monkeypatch, cfg, 1000).advice if "train.batch_size to" in t]
    assert [t.split(" (")[0] for t in tips] == (
        [f"set train.batch_size to {advised[0]} and train.grad_accum_steps to {advised[1]}"] if advised else [])


def test_the_skeleton_is_fp32_like_the_weights_that_train_even_for_a_bf16_checkpoint_config():
    """A hub config saying bfloat16 must not halve the count, nor give FSDP's skeleton ranks other dtypes than
    rank 0."""
    config = tiny_config()
    config.dtype = torch.bfloat16
    assert {p.dtype for p in pf.skeleton(config).parameters()} == {torch.float32}
