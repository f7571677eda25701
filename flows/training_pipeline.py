"""The training pipeline flow: ingest, tokenize, train, evaluate, compress, profile, register, promote."""
from __future__ import annotations

from typing import Optional

from prefect import flow

from llmops.infra.config import PipelineConfig
from llmops.models.records import DatasetRef, PipelineReport
from llmops.tasks.compression import quantize_model
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
    number = reserve_version(config.model_name)
    evaluation = evaluate_model(run, dataset, config.eval, config.gate, config.model_name, number,
                                attention=config.model.attention, adapt=config.adapt)
    quant = quantize_model(run, dataset, config.compress, config.eval, config.model_name)
    profile = build_reference_profile(run, dataset, config, number)
    version = register_model(config, number, dataset, tokenizer, run, evaluation, quant, profile)
    canary = config.serve.canary.alias if config.serve.canary.enabled else None
    production = promote_model(version, evaluation, config.promote, canary)
    return PipelineReport(
        model_name=config.model_name, dataset=dataset, tokenizer=tokenizer, run=run, evaluation=evaluation,
        quantization=quant, version=version, promoted=production == version.version,
        production_version=production, model_card_uri=version.uri.rsplit("/", 1)[0] + "/README.md",
    )
