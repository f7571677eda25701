"""Evaluate stage: perplexity and bits per byte, samples, and the gate against production, as a Prefect artifact."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from infra.config import EvalConfig, GateConfig
from infra.markdown import markdown_table
from models.evaluation import evaluate_run
from models.records import DatasetRef, EvalReport, TrainRef
from tasks.common import artifact_key, cache_dir, store


@task(name="evaluate-model")
def evaluate_model(run: TrainRef, dataset: DatasetRef, eval_cfg: EvalConfig, gate_cfg: GateConfig,
                   model_name: str) -> EvalReport:
    report = evaluate_run(store(), run, dataset, eval_cfg, gate_cfg, model_name, cache_dir())
    table = markdown_table(
        ["split", "documents", "perplexity", "bits/byte"],
        [[s.split, s.documents, f"{s.perplexity:.2f}", f"{s.bits_per_byte:.4f}"] for s in report.splits.values()],
    )
    samples = markdown_table(["setting", "prompt", "completion"],
                             [[s.setting, s.prompt, s.completion] for s in report.samples])
    verdict = "PROMOTE" if report.gate.promote else "KEEP PRODUCTION"
    create_markdown_artifact(
        f"# Evaluation of run {run.run_id}\n\n{table}\n\n## Gate: {verdict}\n\n{report.gate.reason}\n\n"
        f"## Samples\n\n{samples}\n",
        key=artifact_key(model_name, "evaluation"),
        description=f"gate: {verdict}",
    )
    get_run_logger().info("gate: %s (%s)", verdict, report.gate.reason)
    return report
