"""A training run as a stage: content-addressed run id, resume, final model + tokenizer, metrics and plot in the store."""
from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Callable, Optional

from transformers import GenerationConfig, PreTrainedTokenizerBase

from infra.config import ModelConfig, TrainConfig
from infra.store import ArtifactStore
from models.checkpoint import Checkpointer
from models.plots import plot_training
from models.presets import build_config
from models.records import PackedRef, TokenizerRef, TrainRef
from models.tokenizer import load_packed
from models.training import StepMetrics, TrainingError, build_model, read_metrics, train

log = logging.getLogger("llmops.runs")


def run_id_for(packed: PackedRef, tokenizer: TokenizerRef, model_cfg: ModelConfig, train_cfg: TrainConfig) -> str:
    """The same data, tokenizer and configs give the same id, so a rerun resumes (or reuses) the run."""
    relevant = train_cfg.model_dump_json(exclude={"num_threads"})
    text = "\x00".join(["run-v1", packed.sha256, tokenizer.sha256, model_cfg.model_dump_json(), relevant])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_training(store: ArtifactStore, packed: PackedRef, tokenizer_ref: TokenizerRef,
                 tokenizer: PreTrainedTokenizerBase, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 cache_dir: Path, on_metrics: Optional[Callable[[StepMetrics], None]] = None) -> TrainRef:
    """Train (or resume, or reuse) the run for these inputs and return its record."""
    if packed.block_size != train_cfg.block_size:
        raise TrainingError(f"packed blocks are {packed.block_size} tokens but train.block_size is {train_cfg.block_size}")
    run_id = run_id_for(packed, tokenizer_ref, model_cfg, train_cfg)
    prefix = f"runs/{run_id}"
    if store.exists(f"{prefix}/manifest.json"):
        log.info("run %s already finished; reusing it", run_id)
        return TrainRef.model_validate(store.get_json(f"{prefix}/manifest.json"))
    config = build_config(model_cfg.preset, vocab_size=tokenizer_ref.vocab_size, context_length=train_cfg.block_size,
                          bos_token_id=tokenizer_ref.eos_token_id, eos_token_id=tokenizer_ref.eos_token_id,
                          overrides=model_cfg.overrides)
    model = build_model(config, train_cfg.seed)
    local = Path(cache_dir) / "runs" / run_id
    outcome = train(
        model,
        load_packed(store, packed, "train", cache_dir),
        load_packed(store, packed, "validation", cache_dir),
        train_cfg,
        Checkpointer(store, f"{prefix}/checkpoints", keep=train_cfg.keep_checkpoints),
        local / "metrics.jsonl",
        on_metrics,
    )
    rows = read_metrics(local / "metrics.jsonl")
    plot_training(rows, local / "loss.png", title=f"run {run_id} ({model_cfg.preset})")
    store.put_file(f"{prefix}/metrics.jsonl", local / "metrics.jsonl")
    store.put_file(f"{prefix}/loss.png", local / "loss.png")
    model = outcome.model.cpu()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        hashes = store.upload_dir(tmp, f"{prefix}/final")
    ref = TrainRef(
        run_id=run_id,
        uri=store.uri_for(f"{prefix}/final"),
        sha256=hashes["model.safetensors"],
        steps=outcome.state.step,
        tokens_seen=outcome.state.tokens_seen,
        final_train_loss=outcome.final_train_loss,
        final_val_loss=outcome.state.last_val_loss,
        wall_s=round(outcome.state.elapsed_s, 2),
        metrics_uri=store.uri_for(f"{prefix}/metrics.jsonl"),
        loss_plot_uri=store.uri_for(f"{prefix}/loss.png"),
        parameters=sum(p.numel() for p in model.parameters()),
        device=outcome.device,
        precision=outcome.precision,
        resumed_from_step=outcome.resumed_from_step,
    )
    store.put_json(f"{prefix}/manifest.json", ref.model_dump(mode="json"))
    return ref


def download_run_model(store: ArtifactStore, ref: TrainRef, cache_dir: Path) -> Path:
    """A local copy of the run's final model folder."""
    local = Path(cache_dir) / "runs" / ref.run_id / "final"
    if not (local / "model.safetensors").exists():
        store.download_dir(store.key_for(ref.uri), local)
    return local
