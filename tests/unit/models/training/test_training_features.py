"""Training switches: fused AdamW, attention kernel, gradient checkpointing, padded length-grouped batches, precision,
run ids."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmops.infra.config import DistributedSettings, LoraSettings, ModelConfig, TrainConfig
from llmops.infra.store import LocalStore
from llmops.models.data.packing import Ragged, load_packed, pack_dataset
from llmops.models.model.presets import build_config
from llmops.models.records import DatasetRef, PackedRef, TokenizerRef
from llmops.models.training.batching import IGNORE_INDEX, LengthGroupedSampler, make_sampler, pad_batch
from llmops.models.training.checkpoint import Checkpointer, TrainerState, TrainingError
from llmops.models.training.loop import read_metrics, train
from llmops.models.training.optim import make_optimizer
from llmops.models.training.run import run_training
from llmops.models.training.run_id import run_id_for
from llmops.models.training.setup import build_model
from llmops.models.training.steps import micro_loss, optimizer_step, unscale_and_clip
from tests.helpers import stdlib_texts, tiny_tokenizer
from tests.unit.models.training.test_loop import BLOCK, VOCAB, config, patterned_blocks, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def patterned_documents(n: int = 160, seed: int = 0) -> Ragged:
    """Documents of 6..BLOCK tokens cut from the 32-token cycle: learnable, and of varied length."""
    rng = np.random.default_rng(seed)
    cycle = np.tile(np.arange(2, 34), 4)
    docs = [cycle[o:o + length] for o, length in zip(rng.integers(0, 32, n), rng.integers(6, BLOCK + 1, n))]
    return Ragged.from_sequences(docs, dtype=np.uint16)


class CrashAt(Exception):
    pass


def crash_at(step: int):
    def on_metrics(m):
        if m.step == step:
            raise CrashAt(step)
    return on_metrics


def losses_after(path, step: int) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(path) if r["step"] > step}


def resumed_matches_straight(tmp_path, data, val, cfg, crash: int = 15) -> None:
    """Crash in-process after step ``crash``, resume on a differently seeded model, compare with a straight run."""
    store = LocalStore(tmp_path / "crashed")
    with pytest.raises(CrashAt):
        train(tiny_model(), data, val, cfg, Checkpointer(store, "ck"), tmp_path / "crashed.jsonl", crash_at(crash))
    last = Checkpointer(store, "ck").latest()
    resumed = train(tiny_model(seed=99), data, val, cfg, Checkpointer(store, "ck"), tmp_path / "crashed.jsonl")
    assert resumed.resumed_from_step == last < crash
    train(tiny_model(), data, val, cfg, Checkpointer(LocalStore(tmp_path / "straight"), "ck"),
          tmp_path / "straight.jsonl")
    got, want = losses_after(tmp_path / "crashed.jsonl", last), losses_after(tmp_path / "straight.jsonl", last)
    assert sorted(got) == list(range(last + 1, cfg.max_steps + 1))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- optimizer and attention


@pytest.mark.parametrize("fused", [True, False])
def test_fused_adamw_is_a_switch(fused):
    optimizer = make_optimizer(tiny_model(), config(fused_adamw=fused), torch.device("cpu"))
    assert bool(optimizer.defaults.get("fused")) is fused  # torch >= 2.4 fuses AdamW on CPU too


def test_eager_and_sdpa_attention_compute_the_same_loss():
    cfg = build_config("tiny", vocab_size=VOCAB, context_length=BLOCK, bos_token_id=0, eos_token_id=0)
    x = torch.from_numpy(patterned_blocks(4).astype(np.int64))
    losses = {}
    for attention in ("sdpa", "eager"):
        model = build_model(cfg, seed=0, attention=attention)
        assert model.config._attn_implementation == attention
        losses[attention] = model(input_ids=x, labels=x).loss.item()
    assert losses["sdpa"] == pytest.approx(losses["eager"], rel=1e-5)


# ---------------------------------------------------------------- gradient checkpointing


def test_gradient_checkpointing_is_enabled_and_leaves_the_losses_unchanged(tmp_path):
    blocks = patterned_blocks()
    cfg = config(max_steps=8, eval_every=100, checkpoint_every=100)
    plain = train(tiny_model(), blocks, blocks[:16], cfg, Checkpointer(LocalStore(tmp_path / "a"), "ck"),
                  tmp_path / "a.jsonl")
    ckpt = train(tiny_model(), blocks, blocks[:16], cfg.model_copy(update={"gradient_checkpointing": True}),
                 Checkpointer(LocalStore(tmp_path / "b"), "ck"), tmp_path / "b.jsonl")
    assert ckpt.model.is_gradient_checkpointing and not plain.model.is_gradient_checkpointing
    assert [r["loss"] for r in read_metrics(tmp_path / "b.jsonl")] == pytest.approx(
        [r["loss"] for r in read_metrics(tmp_path / "a.jsonl")], rel=1e-5)


def test_a_checkpointed_run_resumes_exactly(tmp_path):
    blocks = patterned_blocks()
    cfg = config(max_steps=20, gradient_checkpointing=True, grad_accum_steps=2)
    resumed_matches_straight(tmp_path, blocks, blocks[:16], cfg)


# ---------------------------------------------------------------- padded, length-grouped batches


def test_a_padded_batch_masks_padding_out_of_attention_and_labels():
    batch = pad_batch([np.array([5, 6, 7]), np.array([8, 9, 10, 11, 12])])
    assert batch.input_ids.shape == (2, 5)
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.labels[0].tolist() == [5, 6, 7, IGNORE_INDEX, IGNORE_INDEX]
    assert (batch.tokens, batch.targets) == (8, 6)


def test_padding_does_not_change_the_loss():
    """The loss of a padded batch is the token-weighted mean of each document's loss computed alone."""
    model = tiny_model().eval()
    docs = [np.arange(2, 9), np.arange(10, 30), np.arange(3, 14)]
    with torch.no_grad():
        padded = pad_batch(docs)
        together = micro_loss(model, padded, 1, padded.targets).item()
        alone = [(model(input_ids=torch.tensor(d[None]), labels=torch.tensor(d[None])).loss.item(), len(d) - 1)
                 for d in docs]
    assert together == pytest.approx(sum(loss * n for loss, n in alone) / sum(n for _, n in alone), rel=1e-5)


def test_length_grouped_batches_are_deterministic_cover_each_document_once_and_pad_little():
    docs = patterned_documents(200)
    sampler = LengthGroupedSampler(docs, batch_size=8, seed=3, group=8)
    order = sampler.epoch_order(0)
    assert order.shape == (25, 8) and len(np.unique(order)) == 200
    assert np.array_equal(order, LengthGroupedSampler(docs, 8, seed=3, group=8).epoch_order(0))
    assert not np.array_equal(order, sampler.epoch_order(1))
    lengths = docs.lengths
    grouped_pad = (lengths[order].max(axis=1, keepdims=True) - lengths[order]).sum()
    random = np.random.default_rng(0).permutation(200).reshape(25, 8)
    random_pad = (lengths[random].max(axis=1, keepdims=True) - lengths[random]).sum()
    assert grouped_pad < 0.5 * random_pad


def test_the_sampler_resumes_from_the_data_position_in_the_state():
    docs = patterned_documents(50)
    state = TrainerState()
    sampler = make_sampler(docs, "pad", 8, seed=0)
    first = [sampler.next_batch(state).input_ids for _ in range(4)]
    saved = state.model_copy()
    later = [sampler.next_batch(state).input_ids for _ in range(6)]  # crosses into epoch 1 (6 batches per epoch)
    fresh = make_sampler(docs, "pad", 8, seed=0)
    again = [fresh.next_batch(saved).input_ids for _ in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(later, again))
    assert saved.epoch == 1 and len(first) == 4


def test_batching_and_data_layout_must_agree():
    with pytest.raises(TrainingError, match="batching=pad needs per-document tokens"):
        make_sampler(patterned_blocks(), "pad", 8, 0)
    with pytest.raises(TrainingError, match="batching=pack needs token blocks"):
        make_sampler(patterned_documents(), "pack", 8, 0)


def test_padded_training_learns_and_counts_only_real_tokens(tmp_path):
    docs = patterned_documents()
    cfg = config(max_steps=40, batching="pad", lr=5e-3, grad_accum_steps=2)
    out = train(tiny_model(), docs, patterned_documents(16, seed=1), cfg, Checkpointer(LocalStore(tmp_path), "ck"),
                tmp_path / "m.jsonl")
    rows = read_metrics(tmp_path / "m.jsonl")
    assert np.mean([r["loss"] for r in rows[-5:]]) < 0.6 * np.mean([r["loss"] for r in rows[:5]])
    replay, state = make_sampler(docs, "pad", 8, cfg.seed), TrainerState()
    real = sum(replay.next_batch(state).tokens for _ in range(40 * 2))
    assert out.state.tokens_seen == real < 40 * 2 * 8 * BLOCK  # padding is not counted
    assert rows[-1]["tokens_seen"] == real and out.state.last_val_loss is not None


def test_a_padded_run_resumes_exactly(tmp_path):
    cfg = config(max_steps=20, batching="pad", grad_accum_steps=2)
    resumed_matches_straight(tmp_path, patterned_documents(), patterned_documents(16, seed=1), cfg)


def test_pad_batching_stores_one_truncated_document_per_example_and_trains_through_the_pipeline(tmp_path):
    tok, store, cache = tiny_tokenizer(), LocalStore(tmp_path / "store"), tmp_path / "cache"
    dataset = DatasetRef(name="d", uri="/d/manifest.json", sha256="d" * 64, splits={}, sources=["docs"])
    tok_ref = TokenizerRef(uri="/t", sha256="t" * 64, kind="bpe", vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    texts = stdlib_texts()[:30] + [f"A short document, number {i}." for i in range(30)]
    splits = {"train": texts, "validation": texts[:8]}
    blocks = pack_dataset(store, dataset, tok_ref, splits, tok, BLOCK)
    docs = pack_dataset(store, dataset, tok_ref, splits, tok, BLOCK, batching="pad")
    # pinned: the blocks key predates layouts, so stores packed before them are reused as they are
    assert BLOCK == 32 and blocks.layout == "blocks"
    assert blocks.sha256 == "09afe5e65969ce0c890717a8c1dd231b9f98ae7772f7ccecccd93b152f0b0b10"
    assert docs.layout == "ragged" and docs.uri != blocks.uri and docs.blocks == {"train": 60, "validation": 8}
    prefix = store.key_for(docs.uri).rsplit("/", 1)[0]
    assert {"train.ids.npy", "train.offsets.npy"} <= {k.rsplit("/", 1)[1] for k in store.list(prefix)}
    data = load_packed(store, docs, "train", cache)
    for i, text in enumerate(texts):  # eos ends each document, unless truncation cut it off
        assert data[i].tolist() == [*tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id][:BLOCK]
    assert docs.tokens["train"] == data.size < 60 * BLOCK

    cfg = TrainConfig(max_steps=6, max_minutes=None, batch_size=8, block_size=BLOCK, eval_every=6, eval_batches=1,
                      checkpoint_every=6, num_threads=1)
    with pytest.raises(TrainingError, match="batching=pack needs the blocks layout"):
        run_training(store, docs, tok_ref, tok, ModelConfig(preset="tiny"), cfg, cache)
    ref = run_training(store, docs, tok_ref, tok, ModelConfig(preset="tiny"),
                       cfg.model_copy(update={"batching": "pad"}), cache)
    assert ref.steps == 6 and ref.tokens_seen < 6 * 8 * BLOCK and ref.final_val_loss is not None
    assert ref.preflight.available_tokens == data.size


# ---------------------------------------------------------------- precision and the loss scaler


def test_bf16_autocast_trains_on_cpu(tmp_path):
    blocks = patterned_blocks()
    out = train(tiny_model(), blocks, blocks[:16], config(max_steps=30, precision="bf16"),
                Checkpointer(LocalStore(tmp_path), "ck"), tmp_path / "m.jsonl")
    rows = read_metrics(tmp_path / "m.jsonl")
    assert out.precision == "bf16" and rows[-1]["loss"] < 0.8 * rows[0]["loss"]


def test_the_loss_scaler_skips_a_step_with_inf_gradients_after_unscaling():
    model = tiny_model()
    optimizer = make_optimizer(model, config(), torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.from_numpy(patterned_blocks(2).astype(np.int64))
    scaler.scale(model(input_ids=x, labels=x).loss).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    grad_norm = unscale_and_clip(model, optimizer, scaler, config())
    skipped = optimizer_step(optimizer, scaler)
    assert skipped and not np.isfinite(grad_norm) and scaler.get_scale() == 2.0**15
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    scaler.scale(model(input_ids=x, labels=x).loss).backward()  # a finite step goes through, unscaled first
    grad_norm = unscale_and_clip(model, optimizer, scaler, config(grad_clip=1.0))
    skipped = optimizer_step(optimizer, scaler)
    assert not skipped and np.isfinite(grad_norm) and grad_norm < 1e3  # the true norm, not 2**15 times it
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def _cuda_learns(tmp_path, precision: str) -> None:
    blocks = patterned_blocks()
    out = train(tiny_model(), blocks, blocks[:16], config(max_steps=60, device="cuda", precision=precision),
                Checkpointer(LocalStore(tmp_path), "ck"), tmp_path / "m.jsonl")
    rows = read_metrics(tmp_path / "m.jsonl")
    assert out.device.startswith("cuda") and out.precision == precision
    assert np.mean([r["loss"] for r in rows[-5:]]) < 0.6 * np.mean([r["loss"] for r in rows[:5]])
    assert rows[-1]["memory_mb"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_learns_on_cuda(tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    _cuda_learns(tmp_path, "bf16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_the_loss_scaler_learns_on_cuda(tmp_path):
    _cuda_learns(tmp_path, "fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_padded_checkpointed_compiled_bf16_learns_on_cuda(tmp_path):
    docs = patterned_documents()
    cfg = config(max_steps=60, device="cuda", precision="bf16", batching="pad", gradient_checkpointing=True,
                 compile=True)
    train(tiny_model(), docs, patterned_documents(16, seed=1), cfg, Checkpointer(LocalStore(tmp_path), "ck"),
          tmp_path / "m.jsonl")
    rows = read_metrics(tmp_path / "m.jsonl")
    assert np.mean([r["loss"] for r in rows[-5:]]) < 0.6 * np.mean([r["loss"] for r in rows[:5]])


# ---------------------------------------------------------------- run ids

# Golden run ids, computed by the code before the package refactoring and pinned as literals: a run id is the key
# an interrupted run resumes (or a finished one is reused) under, so an unchanged config must keep its id across
# upgrades, and settings that only change how a run executes must never change it.
_PACKED = PackedRef(uri="s3://b/packed/manifest.json", sha256="a" * 64, block_size=128, blocks={"train": 10},
                    tokens={"train": 1280})
_TOK = TokenizerRef(uri="s3://b/tokenizers/x", sha256="b" * 64, kind="bpe", vocab_size=4096, eos_token_id=0)
_BASE = "/models/base@" + "c" * 16
_DEFAULT_IDS = ("cb6efa6ad0a12ca3", "7f5af7aa16479736")  # (without, with base_model=_BASE)
_TINY_SHORT = TrainConfig(max_steps=50, max_minutes=None, lr=1e-3)
_TINY_SHORT_IDS = ("baa7d70ef47afe64", "2cb4a5405f768200")
_GOLDEN_RUN_IDS = {  # name: (model_cfg, train_cfg, (run id, run id with base_model=_BASE))
    "defaults": (ModelConfig(), TrainConfig(), _DEFAULT_IDS),
    "tiny_preset_short": (ModelConfig(preset="tiny"), _TINY_SHORT, _TINY_SHORT_IDS),
    "execution_only_changed": (
        ModelConfig(attention="eager"),
        TrainConfig(num_threads=2, fused_adamw=False, gradient_checkpointing=True, preflight="warn", preflight_steps=0,
                    peak_tflops=10.0, cpu_matmul="aten", fused_loss=False, compile=True,
                    distributed=DistributedSettings(nproc_per_node=2)),
        _DEFAULT_IDS),
    # execution-only settings of the previous run-id test, each alone: the defaults' id
    "compile_off": (ModelConfig(), TrainConfig(compile=False), _DEFAULT_IDS),
    "fsdp": (ModelConfig(), TrainConfig(distributed=DistributedSettings(nproc_per_node=2, strategy="fsdp")),
             _DEFAULT_IDS),
    "tiny_preset_short_eager": (ModelConfig(preset="tiny", attention="eager"), _TINY_SHORT, _TINY_SHORT_IDS),
    # fields that change what is trained: a new id
    "pad_batching": (ModelConfig(), TrainConfig(batching="pad"), ("c7862541673d504f", "d92b76dc40cd6b1b")),
    "lora": (ModelConfig(), TrainConfig(lora=LoraSettings()), ("ec3233eb36a4f375", "188b954be1830f90")),
    "overrides": (ModelConfig(overrides={"num_hidden_layers": 2}), TrainConfig(seed=7),
                  ("9def7d57b66fac7f", "37826784b9e098f2")),
}
_GOLDEN_CASES = [
    *(pytest.param(m, t, None, ids[0], id=name) for name, (m, t, ids) in _GOLDEN_RUN_IDS.items()),
    *(pytest.param(m, t, _BASE, ids[1], id=f"{name}+base") for name, (m, t, ids) in _GOLDEN_RUN_IDS.items()),
    pytest.param(ModelConfig(pretrained="/models/base"), TrainConfig(), _BASE, "2c3177319477e7a4", id="pretrained"),
]


@pytest.mark.parametrize("model_cfg, train_cfg, base_model, expected", _GOLDEN_CASES)
def test_run_id_is_pinned_so_unchanged_configs_resume_and_execution_only_settings_never_change_it(
        model_cfg, train_cfg, base_model, expected):
    assert run_id_for(_PACKED, _TOK, model_cfg, train_cfg, base_model=base_model) == expected


@pytest.mark.parametrize("setting, cpu, cuda", [("auto", False, True), (True, True, True), (False, False, False)])
def test_compile_is_on_by_default_on_cuda_only(setting, cpu, cuda):
    from llmops.infra.config import PipelineConfig
    from llmops.models.training.precision import resolve_compile

    value = PipelineConfig().with_overrides([f"train.compile={str(setting).lower()}"]).train.compile
    assert value == setting
    assert (resolve_compile(value, torch.device("cpu")), resolve_compile(value, torch.device("cuda"))) == (cpu, cuda)
