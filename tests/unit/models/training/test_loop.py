"""The training loop: schedule, optimizer groups, learning, checkpoints, kill-and-resume, divergence."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llmops.infra.config import TrainConfig
from llmops.infra.store import LocalStore
from llmops.models.model.presets import build_config
from llmops.models.training.batching import BlockSampler
from llmops.models.training.checkpoint import Checkpointer, TrainingError
from llmops.models.training.loop import read_metrics, train
from llmops.models.training.optim import lr_at, make_optimizer
from llmops.models.training.setup import build_model

VOCAB, BLOCK = 64, 32


def patterned_blocks(n: int = 256, seed: int = 0) -> np.ndarray:
    """Blocks cut from a repeating 32-token cycle at random offsets: learnable, unlike random ids."""
    cycle = np.arange(2, 34)
    stream = np.tile(cycle, 400)
    offsets = np.random.default_rng(seed).integers(0, len(cycle), n)
    return np.stack([stream[o:o + BLOCK] for o in offsets]).astype(np.uint16)


def tiny_model(seed: int = 0):
    config = build_config("tiny", vocab_size=VOCAB, context_length=BLOCK, bos_token_id=0, eos_token_id=0)
    return build_model(config, seed)


def config(**overrides) -> TrainConfig:
    # no wall-clock budget: the schedule then follows steps alone, so resumed runs reproduce exactly
    base = dict(max_steps=40, max_minutes=None, batch_size=8, block_size=BLOCK, lr=3e-3, warmup_steps=5,
                eval_every=10, eval_batches=2, checkpoint_every=10, num_threads=1)
    return TrainConfig(**{**base, **overrides})


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(cfg, s, 0.0) for s in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1e-3
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_a_time_budget_moves_the_schedule_to_its_floor():
    cfg = TrainConfig(max_steps=10_000, warmup_steps=0, lr=1e-3, min_lr_ratio=0.1, max_minutes=1.0)
    assert lr_at(cfg, 10, elapsed_s=30.0) == pytest.approx(5.5e-4, rel=0.01)  # half the budget: half the cosine
    assert lr_at(cfg, 10, elapsed_s=60.0) == pytest.approx(1e-4)


def test_weight_decay_applies_to_matrices_only():
    optimizer = make_optimizer(tiny_model(), config(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])


def test_tiny_model_learns_patterned_tokens(tmp_path):
    blocks = patterned_blocks()
    out = train(tiny_model(), blocks, blocks[:32], config(max_steps=60), Checkpointer(LocalStore(tmp_path), "ck"),
                tmp_path / "metrics.jsonl")
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert len(rows) == 60 and rows[-1]["step"] == 60
    assert np.mean([r["loss"] for r in rows[-5:]]) < 0.6 * np.mean([r["loss"] for r in rows[:5]])
    assert out.state.last_val_loss < rows[0]["loss"]
    assert {"lr", "grad_norm", "tokens_per_s", "memory_mb"} <= set(rows[-1])


def test_checkpoints_keep_the_last_k_and_commit_manifests_last(tmp_path):
    store = LocalStore(tmp_path)
    blocks = patterned_blocks()
    train(tiny_model(), blocks, blocks[:16], config(max_steps=30, keep_checkpoints=2),
          Checkpointer(store, "ck", keep=2), tmp_path / "m.jsonl")
    ckpt = Checkpointer(store, "ck", keep=2)
    assert ckpt.steps() == [20, 30]
    assert store.get_json("ck/latest.json")["step"] == 30
    state = store.get_json("ck/step-00000030/trainer_state.json")
    assert state["step"] == 30 and state["tokens_seen"] == 30 * 8 * BLOCK


def test_an_incomplete_checkpoint_is_ignored(tmp_path):
    store = LocalStore(tmp_path)
    blocks = patterned_blocks()
    train(tiny_model(), blocks, blocks[:16], config(max_steps=20), Checkpointer(store, "ck"), tmp_path / "m.jsonl")
    store.put_bytes("ck/step-00000099/model.safetensors", b"torn write, no manifest")
    assert Checkpointer(store, "ck").latest() == 20


WORKER = """
import sys, json, numpy as np
sys.path.insert(0, {root!r})
from tests.unit.models.training.test_loop import patterned_blocks, tiny_model, config
from llmops.infra.store import LocalStore
from llmops.models.training.checkpoint import Checkpointer
from llmops.models.training.loop import train
cfg = config(**json.loads(sys.argv[2]))
blocks = patterned_blocks()
train(tiny_model(), blocks, blocks[:16], cfg, Checkpointer(LocalStore(sys.argv[1]), "ck"),
      __import__("pathlib").Path(sys.argv[1]) / "m.jsonl")
"""


def test_a_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    """SIGKILL mid-run, rerun: it starts from the last checkpoint and its later losses match exactly."""
    overrides = {"max_steps": 40, "checkpoint_every": 10}
    killed_dir = tmp_path / "killed"
    script = WORKER.format(root=str(Path(__file__).parents[4]))
    proc = subprocess.Popen([sys.executable, "-c", script, str(killed_dir), json.dumps(overrides)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    manifest = killed_dir / "ck" / "step-00000020" / "manifest.json"
    deadline = time.monotonic() + 120
    while not manifest.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the worker never wrote its step-20 checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = LocalStore(killed_dir)
    resumed_at = Checkpointer(store, "ck").latest()
    assert resumed_at is not None and 20 <= resumed_at < 40

    blocks = patterned_blocks()
    resumed = train(tiny_model(seed=123), blocks, blocks[:16], config(**overrides), Checkpointer(store, "ck"),
                    killed_dir / "m.jsonl")
    assert resumed.resumed_from_step == resumed_at and resumed.state.step == 40

    straight_dir = tmp_path / "straight"
    train(tiny_model(), blocks, blocks[:16], config(**overrides), Checkpointer(LocalStore(straight_dir), "ck"),
          straight_dir / "m.jsonl")
    after = lambda rows: {r["step"]: r["loss"] for r in rows if r["step"] > resumed_at}  # noqa: E731
    resumed_losses, straight_losses = (after(read_metrics(killed_dir / "m.jsonl")),
                                       after(read_metrics(straight_dir / "m.jsonl")))
    assert sorted(resumed_losses) == list(range(resumed_at + 1, 41))
    assert resumed_losses == pytest.approx(straight_losses, rel=1e-5, abs=1e-6)
    steps = [r["step"] for r in read_metrics(killed_dir / "m.jsonl")]
    assert steps == list(range(1, 41)), "the metrics file is rewound with the checkpoint: no duplicated steps"


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    """A step whose gradients are inf/NaN (the loss still finite) stops before it reaches the weights."""
    store = LocalStore(tmp_path)
    blocks = patterned_blocks()
    cfg = config(max_steps=30, lr=1e3, warmup_steps=0, grad_clip=0, checkpoint_every=1)
    with pytest.raises(TrainingError, match=r"(loss|the gradient norm) became (nan|inf) at step (\d+); the last good "
                       r"checkpoint is step (\d+)\. Try: lower train.lr \(now 1000.0\); "
                       r"turn gradient clipping on") as err:
        train(tiny_model(), blocks, blocks[:16], cfg, Checkpointer(store, "ck"), tmp_path / "m.jsonl")
    assert "fp32" not in str(err.value), "a run in fp32 is not told to use fp32"
    failed, last = (int(n) for n in re.search(r"at step (\d+); .* step (\d+)\.", str(err.value)).groups())
    assert last == Checkpointer(store, "ck").latest() == failed - 1
    saved = load_file(str(tmp_path / "ck" / f"step-{last:08d}" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values()), "the checkpoint named good holds finite weights"


def test_too_little_data_for_a_batch_is_explained():
    with pytest.raises(TrainingError, match="only 3 training blocks for a batch of 8"):
        BlockSampler(patterned_blocks(3), batch_size=8, seed=0)


def test_cuda_requested_without_a_gpu_is_explained(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    blocks = patterned_blocks()
    with pytest.raises(TrainingError, match="train.device=cuda but no CUDA device is visible"):
        train(tiny_model(), blocks, blocks, config(device="cuda"), Checkpointer(LocalStore(tmp_path), "ck"),
              tmp_path / "m")


def test_a_failed_run_still_publishes_its_metrics_and_plot(tmp_path):
    """The run's store folder shows what a diverged run did, up to the step before it failed."""
    from llmops.infra.config import PipelineConfig
    from tests.helpers import train_stdlib_run

    cfg = PipelineConfig.from_dict({
        "tokenizer": {"vocab_size": 300},
        "model": {"preset": "tiny"},
        "train": {"max_steps": 30, "max_minutes": None, "batch_size": 8, "block_size": BLOCK, "lr": 1e3,
                  "warmup_steps": 0, "grad_clip": 0, "eval_every": 30, "checkpoint_every": 2, "num_threads": 1,
                  "preflight_steps": 0},
    })
    with pytest.raises(TrainingError, match="became (nan|inf) at step"):
        train_stdlib_run(tmp_path, cfg)
    store = LocalStore(tmp_path / "store")
    [metrics] = [k for k in store.list("runs") if k.endswith("/metrics.jsonl") and "/checkpoints/" not in k]
    rows = [json.loads(line) for line in store.local_path(metrics).read_text().splitlines()]
    assert rows and [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    assert store.exists(metrics.replace("metrics.jsonl", "loss.png"))
    assert not store.exists(metrics.replace("metrics.jsonl", "manifest.json")), "a failed run commits no record"
