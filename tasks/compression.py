"""Compress stage: precision variants measured beside fp32 (speed, size, parity), the servable ones kept."""
from __future__ import annotations

from typing import Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from llmops.infra.config import CompressConfig, EvalConfig
from llmops.models.compression import compress_run
from llmops.models.data import read_split
from llmops.models.records import CompressionReport, DatasetRef, TrainRef
from llmops.models.release import compression_section
from llmops.tasks.core.context import artifact_key, cache_dir, store, timeout_s


@task(name="compress-model", timeout_seconds=timeout_s("compress-model"))
def compress_model(run: TrainRef, dataset: DatasetRef, cfg: CompressConfig, eval_cfg: EvalConfig,
                   model_name: str) -> Optional[CompressionReport]:
    st = store()
    texts = read_split(st, dataset, "test")[:eval_cfg.max_docs]
    report = compress_run(st, run, texts, cfg, cache_dir(), eval_cfg.stride)
    if report is None:
        return None
    create_markdown_artifact("\n\n".join(compression_section(report)), key=artifact_key(model_name, "compression"),
                             description=f"auto serves {report.serve}")
    logger = get_run_logger()
    for v in report.variants:
        logger.info("%s: %.2fx smaller, %.2fx tokens/s at batch 1, bits/byte %s: %s", v.variant,
                    report.parent_bytes / v.bytes, v.tokens_per_s[1] / report.parent_tokens_per_s[1],
                    "not measured" if v.bpb_increase is None else f"{v.bpb_increase:+.4f}",
                    "servable" if v.servable else "; ".join(v.reasons))
    return report
