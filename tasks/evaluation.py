"""Evaluate stage: perplexity and bits per byte, samples, and the gate against production, as a Prefect artifact."""
from __future__ import annotations

from typing import Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from llmops.infra.config import AdaptConfig, EvalConfig, GateConfig
from llmops.infra.markdown import markdown_table
from llmops.models.evaluation import evaluate_run
from llmops.models.records import DatasetRef, EvalReport, GateDecision, TrainRef
from llmops.models.release import gate_slices_table
from llmops.tasks.core.context import artifact_key, cache_dir, store, timeout_s


@task(name="evaluate-model", timeout_seconds=timeout_s("evaluate-model"))
def evaluate_model(run: TrainRef, dataset: DatasetRef, eval_cfg: EvalConfig, gate_cfg: GateConfig,
                   model_name: str, candidate_version: Optional[int] = None, attention: str = "sdpa",
                   adapt: Optional[AdaptConfig] = None) -> EvalReport:
    """An adaptation's snapshot is gated on two slices (held-out traffic, production's test split) by ``adapt``."""
    report = evaluate_run(store(), run, dataset, eval_cfg, gate_cfg, model_name, cache_dir(), candidate_version,
                          attention, adapt)
    table = markdown_table(
        ["split", "documents", "perplexity", "bits/byte"],
        [[s.split, s.documents, f"{s.perplexity:.2f}", f"{s.bits_per_byte:.4f}"] for s in report.splits.values()],
    )
    samples = markdown_table(["setting", "prompt", "completion"],
                             [[s.setting, s.prompt, s.completion] for s in report.samples])
    g = report.gate
    verdict = "PROMOTE" if g.promote else "KEEP PRODUCTION"
    create_markdown_artifact(
        f"# Evaluation of run {run.run_id}\n\n{table}\n\n## Gate: {verdict}\n\n{_gate_numbers(g)}\n\n"
        f"{g.reason}\n\n## Samples\n\n{samples}\n",
        key=artifact_key(model_name, "evaluation"),
        description=f"gate: {verdict}",
    )
    get_run_logger().info("gate: %s (%s)", verdict, g.reason)
    return report


def _gate_numbers(g: GateDecision) -> str:
    """The gate's numbers: one row per slice of an adaptation's gate, else candidate and production on test."""
    if g.slices:
        return gate_slices_table(g)
    numbers = markdown_table(
        ["", "version", "test bits/byte"],
        [["candidate", _v(g.candidate_version), f"{g.candidate_bits_per_byte:.4f}"],
         ["production", _v(g.production_version),
          "-" if g.production_bits_per_byte is None else f"{g.production_bits_per_byte:.4f}"]],
    )
    interval = "" if g.ci_low is None else f"difference {g.difference:+.4f}, CI [{g.ci_low:+.4f}, {g.ci_high:+.4f}], "
    return f"{numbers}\n\n{interval}threshold {g.threshold:+.4f} over {g.documents} documents"


def _v(version: Optional[int]) -> str:
    return "-" if version is None else f"v{version}"
