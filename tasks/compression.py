"""Compress stage: int8 quantization, measured against fp32 (bits per byte, size, latency)."""
from __future__ import annotations

from typing import Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from llmops.infra.config import CompressConfig, EvalConfig
from llmops.models.compression import compress_run
from llmops.models.data import read_split
from llmops.models.records import DatasetRef, QuantReport, TrainRef
from llmops.tasks.core.context import artifact_key, cache_dir, store, timeout_s


@task(name="quantize-model", timeout_seconds=timeout_s("quantize-model"))
def quantize_model(run: TrainRef, dataset: DatasetRef, cfg: CompressConfig, eval_cfg: EvalConfig,
                   model_name: str) -> Optional[QuantReport]:
    st = store()
    texts = read_split(st, dataset, "test")[:eval_cfg.max_docs]
    report = compress_run(st, run, texts, cfg, cache_dir(), eval_cfg.stride)
    if report is None:
        return None
    create_table_artifact(
        [{"variant": "fp32", "bytes": report.fp32_bytes, "bits_per_byte": round(report.fp32_bits_per_byte, 4),
          "latency_ms": round(report.fp32_latency_ms, 1)},
         {"variant": "int8", "bytes": report.int8_bytes, "bits_per_byte": round(report.int8_bits_per_byte, 4),
          "latency_ms": round(report.int8_latency_ms, 1)}],
        key=artifact_key(model_name, "quantization"),
        description=f"int8 servable: {report.servable}",
    )
    get_run_logger().info("int8: %.2fx smaller, bits/byte %+.4f, latency %.1f -> %.1f ms",
                          report.fp32_bytes / report.int8_bytes, report.bpb_increase,
                          report.fp32_latency_ms, report.int8_latency_ms)
    return report
