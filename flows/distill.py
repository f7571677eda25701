"""``llmops distill``: a student distilled from a teacher (a registered version, an alias, or a local model folder)
on the configured data, then evaluated, compressed, registered and gated like any candidate."""
from __future__ import annotations

from prefect import flow

from llmops.flows.training_pipeline import student_stages
from llmops.infra.config import PipelineConfig, TokenizerConfig
from llmops.models.records import StudentReport
from llmops.tasks.distillation import resolve_teacher_task
from llmops.tasks.ingestion import ingest_data
from llmops.tasks.tokenization import build_tokenizer_task, pack_data


@flow(name="distill", log_prints=True)
def distill_flow(config: PipelineConfig = PipelineConfig(), teacher: str = "production") -> StudentReport:
    """Distill ``compress.distill.student_preset`` (or, with compress.prune.enabled, a pruned copy of a registered
    teacher) from ``teacher``; the data is tokenized with the teacher's own tokenizer."""
    ref = resolve_teacher_task(config.model_name, teacher)
    dataset = ingest_data(config.data, config.model_name)
    tokenizer = build_tokenizer_task(TokenizerConfig(kind="pretrained", path=ref.path), dataset)
    packed = pack_data(dataset, tokenizer, config.train.block_size, config.tokenizer.num_proc, config.train.batching)
    return student_stages(config, dataset, tokenizer, packed, ref)
