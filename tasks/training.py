"""Train stage: preflight, then run (or resume) training, in-process or under torchrun, with a live Prefect
progress artifact and the loss curve linked."""
from __future__ import annotations

import logging
from collections.abc import Callable

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)

from llmops.infra.config import ModelConfig, TrainConfig
from llmops.models.data import load_tokenizer
from llmops.models.records import PackedRef, PreflightReport, TokenizerRef, TrainRef
from llmops.models.training import StepMetrics, launch_run, run_identity, run_training
from llmops.models.training import preflight as pf
from llmops.tasks.core.context import ACCELERATOR_TAG, artifact_key, cache_dir, link, store, timeout_s


@task(name="train-model", timeout_seconds=timeout_s("train-model"), retries=1, retry_delay_seconds=10,
      tags=[ACCELERATOR_TAG])
def train_model(packed: PackedRef, tokenizer_ref: TokenizerRef, model_cfg: ModelConfig,
                train_cfg: TrainConfig) -> TrainRef:
    """A rerun with the same inputs resumes from the last checkpoint, or reuses a finished run.

    With ``train.distributed`` over more than one process, torchrun runs the ranks as a subprocess:
    their output streams into this run's log and rank 0's record comes back through the store.
    """
    logger = get_run_logger()
    st = store()
    name = model_cfg.pretrained or model_cfg.preset
    # keyed like the loss curve: a resumed run adds a version to its own key, distinct runs never share one
    run_id, _ = run_identity(packed, tokenizer_ref, model_cfg, train_cfg)
    progress_id = create_progress_artifact(0.0, key=artifact_key("train-progress", run_id),
                                           description=f"training run {run_id} ({name})")
    report = step_reporter(logger, progress_id, train_cfg)
    preflight = _preflight_reporter(logger, name)
    if train_cfg.distributed.enabled:
        ref = launch_run(st, packed, tokenizer_ref, model_cfg, train_cfg, cache_dir(), on_line=logger.info,
                         on_metrics=report, on_preflight=preflight)
    else:
        ref = run_training(st, packed, tokenizer_ref, load_tokenizer(st, tokenizer_ref, cache_dir()), model_cfg,
                           train_cfg, cache_dir(), on_metrics=report, on_preflight=preflight)
    update_progress_artifact(progress_id, 100.0)
    if ref.loss_plot_uri:
        create_link_artifact(link(ref.loss_plot_uri), link_text="loss curve (PNG)",
                             key=artifact_key("loss-curve", ref.run_id))
    logger.info("run %s: %d steps, final loss %.4f, %.1f s", ref.run_id, ref.steps, ref.final_train_loss, ref.wall_s)
    return ref


def step_reporter(logger: logging.Logger | logging.LoggerAdapter, progress_id, train_cfg: TrainConfig
                  ) -> Callable[[StepMetrics], None]:
    """The on_metrics callback: about 50 times a run (and at every evaluation) move the progress artifact and log the
    step (with the divergence of a distillation, the MFU where the peak is known)."""
    every = max(1, train_cfg.max_steps // 50)

    def report(m: StepMetrics) -> None:
        if m.step % every == 0 or m.val_loss is not None:
            done = m.step / train_cfg.max_steps
            if train_cfg.budget_s:  # a time-budgeted run ends at whichever limit it reaches first
                done = max(done, m.elapsed_s / train_cfg.budget_s)
            update_progress_artifact(progress_id, min(100.0, 100.0 * done))
            kl = f", divergence {m.kl:.4f}" if m.kl is not None else ""
            val = f", val loss {m.val_loss:.4f}" if m.val_loss is not None else ""
            mfu = f", MFU {m.mfu:.1%}" if m.mfu is not None else ""
            logger.info("step %d: loss %.4f%s%s, lr %.2e, %.0f tokens/s%s", m.step, m.loss, kl, val, m.lr,
                        m.tokens_per_s, mfu)

    return report


def _preflight_reporter(logger: logging.Logger | logging.LoggerAdapter, name: str) -> Callable[[PreflightReport], None]:
    """The on_preflight callback: log the summary and publish the report as a markdown artifact."""

    def preflight(r: PreflightReport) -> None:
        logger.info("preflight: %s", pf.summary(r))
        create_markdown_artifact(pf.markdown(r), key=artifact_key("preflight", name),
                                 description=f"preflight of {name}")

    return preflight
