"""A training run as a stage: content-addressed run id, preflight, resume, final model + tokenizer, metrics and
plot in the store."""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from transformers import GenerationConfig, PretrainedConfig, PreTrainedTokenizerBase

from llmops.infra.config import ModelConfig, TrainConfig
from llmops.infra.store import ArtifactStore
from llmops.models.data.packing import layout_for, load_packed
from llmops.models.model.generation import config_context_length
from llmops.models.model.lora import apply_lora, merge_for_deployment
from llmops.models.model.presets import build_config
from llmops.models.model.pretrained import pretrained_config
from llmops.models.records import ModelSizing, PackedRef, PreflightReport, TokenizerRef, TrainRef
from llmops.models.training import budget
from llmops.models.training import preflight as pf
from llmops.models.training.calibration import choose_kernels, with_kernels
from llmops.models.training.checkpoint import Checkpointer, TrainingError
from llmops.models.training.distillation import TeacherSpec, distilled_run_id
from llmops.models.training.distributed import Parallel
from llmops.models.training.loop import StepMetrics, read_metrics, train, warmup_seconds
from llmops.models.training.plots import plot_training
from llmops.models.training.precision import resolve_device, resolve_precision
from llmops.models.training.run_id import run_identity
from llmops.models.training.setup import build_model

log = logging.getLogger("llmops.training")


def model_config_for(model_cfg: ModelConfig, tokenizer_ref: TokenizerRef, block_size: int) -> PretrainedConfig:
    """The transformers config of the model to train: a preset sized to the tokenizer, or the pretrained one's."""
    if not model_cfg.pretrained:
        return build_config(model_cfg.preset, vocab_size=tokenizer_ref.vocab_size, context_length=block_size,
                            bos_token_id=tokenizer_ref.eos_token_id, eos_token_id=tokenizer_ref.eos_token_id,
                            overrides=model_cfg.overrides)
    log.info("fine-tuning model.pretrained=%s: model.preset (%s) is ignored", model_cfg.pretrained, model_cfg.preset)
    if model_cfg.overrides:
        log.warning("model.overrides %s are ignored: a pretrained model keeps its own config", model_cfg.overrides)
    config = pretrained_config(model_cfg.pretrained)
    limit = config_context_length(config)
    if limit and block_size > limit:
        raise TrainingError(f"train.block_size={block_size} exceeds the context of {model_cfg.pretrained} "
                            f"({limit} tokens): lower train.block_size")
    config.vocab_size = max(config.vocab_size, tokenizer_ref.vocab_size)  # embeddings grow to fit the tokenizer
    return config


def build_run_model(model_cfg: ModelConfig, train_cfg: TrainConfig, config: PretrainedConfig) -> torch.nn.Module:
    """The model as it will train: fresh or pretrained (embeddings resized to ``config``), LoRA-wrapped if
    configured."""
    model = build_model(config, train_cfg.seed, init_from=model_cfg.pretrained, attention=model_cfg.attention)
    if model_cfg.pretrained and model.get_input_embeddings().num_embeddings < config.vocab_size:
        model.resize_token_embeddings(config.vocab_size)
    if train_cfg.lora:
        if not model_cfg.pretrained:
            log.warning("train.lora on a model trained from scratch: only the adapters learn, on random weights")
        model = apply_lora(model, train_cfg.lora)
    return model


def _preflight(store: ArtifactStore, prefix: str, model_cfg: ModelConfig, train_cfg: TrainConfig,
               config: PretrainedConfig, train_data, device: torch.device, precision: str,
               writes: bool = True) -> PreflightReport:
    """Estimate on a meta-device skeleton (nothing allocated); refuse a run that cannot fit, before building it."""
    report = pf.preflight(pf.skeleton(config, model_cfg.attention, train_cfg.lora), train_cfg, device, precision,
                          train_data, pretrained=bool(model_cfg.pretrained))
    if not report.fits:
        if writes:
            store.put_json(f"{prefix}/preflight.json", report.model_dump(mode="json"))
        if train_cfg.preflight == "enforce":
            pf.check(report)
        log.warning("preflight: this run may not fit (train.preflight=warn): %s", "; ".join(report.advice))
    return report


def run_training(store: ArtifactStore, packed: PackedRef, tokenizer_ref: TokenizerRef,
                 tokenizer: PreTrainedTokenizerBase, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 cache_dir: Path, on_metrics: Optional[Callable[[StepMetrics], None]] = None,
                 on_preflight: Optional[Callable[[PreflightReport], None]] = None,
                 parallel: Optional[Parallel] = None, teacher: Optional[TeacherSpec] = None) -> Optional[TrainRef]:
    """Train (or resume, or reuse) the run for these inputs and return its record.

    Before training, a preflight estimates memory, compute and duration (``runs/<id>/preflight.json``)
    and raises :class:`llmops.models.training.preflight.PreflightError`, saying what to change, when the run cannot
    fit. A LoRA run's saved model has its adapters merged: the registry and serving load a plain model.

    Under torch.distributed every rank calls this with its ``parallel`` (llmops.models.training.worker):
    they train together, rank 0 alone writes to the store and returns the record, the others None.

    With ``teacher`` the model of ``model_cfg`` is the student, distilled from it in the same loop
    (models/training/distillation.py): the run id is the plain run's id hashed with the teacher's weights and the
    loss settings, and the record says ``method="distill"`` and holds them as ``distillation``.
    """
    parallel = parallel or Parallel()
    _check_layout(packed, train_cfg)
    run_id, base = run_identity(packed, tokenizer_ref, model_cfg, train_cfg)
    distillation = teacher.record() if teacher is not None else None
    if distillation is not None:
        run_id = distilled_run_id(run_id, distillation)
    prefix = f"runs/{run_id}"
    if store.exists(f"{prefix}/manifest.json"):
        log.info("run %s already finished; reusing it", run_id)
        return TrainRef.model_validate(store.get_json(f"{prefix}/manifest.json"))
    train_data = load_packed(store, packed, "train", cache_dir)
    sized = None
    if model_cfg.preset == "auto" and not model_cfg.pretrained:
        sized = size_to_budget(store, prefix, train_cfg, parallel)
        model_cfg = model_cfg.model_copy(update={"preset": "mini", "overrides": {**sized.overrides,
                                                                                 **model_cfg.overrides}})
    config = model_config_for(model_cfg, tokenizer_ref, train_cfg.block_size)
    model, report, kernels = _prepare(store, prefix, model_cfg, train_cfg, config, train_data, Path(cache_dir),
                                      parallel, on_preflight)
    local = Path(cache_dir) / "runs" / run_id
    checkpointer = Checkpointer(store, f"{prefix}/checkpoints", keep=train_cfg.keep_checkpoints)
    title = f"run {run_id} ({model_cfg.pretrained or model_cfg.preset})"
    try:
        outcome = train(model, train_data, load_packed(store, packed, "validation", cache_dir),
                        with_kernels(train_cfg, kernels), checkpointer, local / "metrics.jsonl", on_metrics, parallel,
                        teacher.build(tokenizer_ref.vocab_size) if teacher is not None else None)
    except BaseException:
        if parallel.is_main:  # a diverged or crashed run still shows what it did, up to the failing step
            _publish_metrics_after_failure(store, prefix, local, title)
        raise
    if not parallel.is_main:
        return None
    if parallel.sharded:  # the trained weights are spread over the ranks: rebuild them whole from the last checkpoint
        outcome.model = build_run_model(model_cfg, train_cfg, config)
        checkpointer.load_model(outcome.state.step, outcome.model)
    _publish_metrics(store, prefix, local, title)
    model, sha256 = _save_final(store, prefix, outcome.model, tokenizer, pretrained=bool(model_cfg.pretrained))
    ref = TrainRef(
        run_id=run_id,
        uri=store.uri_for(f"{prefix}/final"),
        sha256=sha256,
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
        method=_method(model_cfg, train_cfg, distilled=distillation is not None),
        base_model=base,
        preflight=report,
        kernels=kernels,
        sized=sized,
        distillation=distillation,
    )
    store.put_json(f"{prefix}/manifest.json", ref.model_dump(mode="json"))
    return ref


def _prepare(store: ArtifactStore, prefix: str, model_cfg: ModelConfig, train_cfg: TrainConfig,
             config: PretrainedConfig, train_data, cache_dir: Path, parallel: Parallel,
             on_preflight: Optional[Callable[[PreflightReport], None]]):
    """Preflight, the model, the timed warm-up step and the kernels: (model, preflight report, kernel choice)."""
    device = resolve_device(train_cfg.device)
    precision = resolve_precision(train_cfg.precision, device)
    report = _preflight(store, prefix, model_cfg, train_cfg, config, train_data, device, precision,
                        writes=parallel.is_main)
    # under FSDP rank 0 alone builds the weights; the others shard a skeleton and receive theirs
    model = build_run_model(model_cfg, train_cfg, config) if parallel.is_main or not parallel.sharded \
        else pf.skeleton(config, model_cfg.attention)
    seconds = warmup_seconds(model, train_data, train_cfg, device, precision, parallel)
    if seconds is not None:
        report = pf.with_duration(report, train_cfg, seconds)
    if parallel.is_main:
        store.put_json(f"{prefix}/preflight.json", report.model_dump(mode="json"))
        log.info("preflight: %s", pf.summary(report))
        if on_preflight:
            on_preflight(report)
    kernels = choose_kernels(model, train_data, train_cfg, device, store=store, run_prefix=prefix,
                             cache_dir=cache_dir, step_s=seconds, parallel=parallel)
    if parallel.is_main:
        log.info("kernels: %s (%s: %s)", kernels.label, kernels.source, kernels.reason)
    return model, report, kernels


def _save_final(store: ArtifactStore, prefix: str, trained: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                pretrained: bool) -> tuple[torch.nn.Module, str]:
    """The plain model (LoRA merged) and the tokenizer in ``runs/<id>/final``: (the model, its weights' sha256)."""
    model = merge_for_deployment(trained).cpu()
    _set_generation_config(model, tokenizer, pretrained=pretrained)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        hashes = store.upload_dir(tmp, f"{prefix}/final")
    return model, hashes["model.safetensors"]


def _method(model_cfg: ModelConfig, train_cfg: TrainConfig, distilled: bool) -> str:
    if distilled:
        return "distill"
    return "lora" if train_cfg.lora else ("full" if model_cfg.pretrained else "scratch")


def size_to_budget(store: ArtifactStore, prefix: str, train_cfg: TrainConfig, parallel: Parallel) -> ModelSizing:
    """``model.preset=auto``: the shape for the run's budget on this machine, decided once by rank 0 and kept in
    ``runs/<id>/sizing.json``, so a resumed run and every rank build the same model."""
    key = f"{prefix}/sizing.json"
    if parallel.is_main and not store.exists(key):
        if not train_cfg.budget_s:
            raise TrainingError("model.preset=auto sizes the model to a wall-clock budget: set train.time_budget_s "
                                "(or train.max_minutes)")
        device = resolve_device(train_cfg.device)
        if device.type != "cpu":
            raise TrainingError(f"model.preset=auto sizes the model from a scaling table measured on CPU "
                                f"(models/training/budget.py); training on {device.type}, choose a preset")
        chosen = budget.plan(train_cfg.budget_s, budget.machine_speed())
        store.put_json(key, ModelSizing(shape=chosen.shape, overrides=chosen.overrides, speed=chosen.speed,
                                        budget_s=train_cfg.budget_s, reason=chosen.reason).model_dump(mode="json"))
    parallel.barrier()
    sizing = ModelSizing.model_validate(store.get_json(key))
    if parallel.is_main:
        log.info("model.preset=auto: %s", sizing.reason)
    return sizing


def _publish_metrics(store: ArtifactStore, prefix: str, local: Path, title: str) -> None:
    """``runs/<id>/metrics.jsonl`` and its loss/throughput plot ``loss.png``."""
    plot_training(read_metrics(local / "metrics.jsonl"), local / "loss.png", title=title)
    store.put_file(f"{prefix}/metrics.jsonl", local / "metrics.jsonl")
    store.put_file(f"{prefix}/loss.png", local / "loss.png")


def _publish_metrics_after_failure(store: ArtifactStore, prefix: str, local: Path, title: str) -> None:
    try:  # reading the metrics too: never hide the error that stopped the run
        if (local / "metrics.jsonl").exists() and read_metrics(local / "metrics.jsonl"):
            _publish_metrics(store, prefix, local, title)
            log.info("the failed run's metrics and plot are at %s", store.uri_for(f"{prefix}/metrics.jsonl"))
    except Exception:
        log.exception("could not publish the failed run's metrics")


def _check_layout(packed: PackedRef, train_cfg: TrainConfig) -> None:
    if packed.block_size != train_cfg.block_size:
        raise TrainingError(f"packed blocks are {packed.block_size} tokens "
                            f"but train.block_size is {train_cfg.block_size}")
    wanted = layout_for(train_cfg.batching)
    if packed.layout != wanted:
        raise TrainingError(f"train.batching={train_cfg.batching} needs the {wanted} layout but the packed data is "
                            f"{packed.layout}: pack it with batching={train_cfg.batching}")


def _set_generation_config(model, tokenizer: PreTrainedTokenizerBase, pretrained: bool) -> None:
    """A preset model generates with eos as bos/eos/pad; a pretrained one keeps its own, with a pad id added."""
    eos = tokenizer.eos_token_id
    if not pretrained:
        model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    elif model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos


