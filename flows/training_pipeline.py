"""The training pipeline flow: ingest, tokenize, train, evaluate, compress, profile, register, promote; then, when
configured, a student pruned from and/or distilled from the candidate, released through the same stages."""
from __future__ import annotations

from typing import Optional

from prefect import flow

from llmops.infra.config import PipelineConfig
from llmops.models.compression import TeacherRef, student_config
from llmops.models.records import (
    DatasetRef,
    PackedRef,
    PipelineReport,
    ReleaseReport,
    StudentReport,
    TokenizerRef,
    TrainRef,
)
from llmops.tasks.compression import compress_model
from llmops.tasks.distillation import distill_model, prune_model
from llmops.tasks.evaluation import evaluate_model
from llmops.tasks.ingestion import ingest_data
from llmops.tasks.monitoring import build_reference_profile
from llmops.tasks.registration import promote_model, register_model, reserve_version
from llmops.tasks.tokenization import build_tokenizer_task, pack_data
from llmops.tasks.training import train_model


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(config: PipelineConfig = PipelineConfig()) -> PipelineReport:
    """Train a model on ``config.data.sources`` and promote it only if it passes the gate."""
    return run_stages(config)


def run_stages(config: PipelineConfig, dataset: Optional[DatasetRef] = None) -> PipelineReport:
    """The stages, inside the calling flow; ``dataset`` (an adaptation's snapshot) replaces ingest."""
    dataset = dataset or ingest_data(config.data, config.model_name)
    tokenizer = build_tokenizer_task(config.tokenizer, dataset, config.model)
    packed = pack_data(dataset, tokenizer, config.train.block_size, config.tokenizer.num_proc, config.train.batching)
    run = train_model(packed, tokenizer, config.model, config.train)
    released = release_candidate(config, dataset, tokenizer, run)
    student = None
    if config.compress.distill.enabled or config.compress.prune.enabled:
        teacher = TeacherRef(label=f"run {run.run_id} (v{released.version.version})", run=run,
                             model_name=config.model_name, version=released.version.version)
        student = student_stages(config, dataset, tokenizer, packed, teacher)
    return PipelineReport(**dict(released), model_name=config.model_name, dataset=dataset, tokenizer=tokenizer,
                          model_card_uri=released.version.uri.rsplit("/", 1)[0] + "/README.md", student=student)


def release_candidate(config: PipelineConfig, dataset: DatasetRef, tokenizer: TokenizerRef,
                      run: TrainRef) -> ReleaseReport:
    """Evaluate and gate a trained run, make its variants, profile it, register it and promote it if it passed."""
    number = reserve_version(config.model_name)
    evaluation = evaluate_model(run, dataset, config.eval, config.gate, config.model_name, number,
                                attention=config.model.attention, adapt=config.adapt)
    compression = compress_model(run, dataset, config.compress, config.eval, config.model_name)
    profile = build_reference_profile(run, dataset, config, number, compression)
    version = register_model(config, number, dataset, tokenizer, run, evaluation, compression, profile)
    canary = config.serve.canary.alias if config.serve.canary.enabled else None
    production = promote_model(version, evaluation, config.promote, canary)
    return ReleaseReport(run=run, evaluation=evaluation, compression=compression, version=version,
                         promoted=production == version.version, production_version=production)


def student_stages(config: PipelineConfig, dataset: DatasetRef, tokenizer: TokenizerRef, packed: PackedRef,
                   teacher: TeacherRef) -> StudentReport:
    """A student of ``teacher``: its pruned copy (compress.prune) or a smaller preset, distilled on the same data,
    then released like any candidate (its own version, gated against production)."""
    pruned = prune_model(teacher, dataset, config.compress.prune) if config.compress.prune.enabled else None
    run = distill_model(packed, tokenizer, teacher, config.model, config.train, config.compress.distill, pruned)
    # the version's recorded model section: the teacher's shape for a pruned copy, else the student preset's
    model = config.model.model_copy(update={"pretrained": None}) if pruned else \
        student_config(config.compress.distill, config.model)
    released = release_candidate(config.model_copy(update={"model": model}), dataset, tokenizer, run)
    return StudentReport(**dict(released), pruned=pruned)
