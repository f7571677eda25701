"""Train stage: run (or resume) training, with a live Prefect progress artifact and the loss curve linked."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_progress_artifact, update_progress_artifact

from infra.config import ModelConfig, TrainConfig
from models.records import PackedRef, TokenizerRef, TrainRef
from models.runs import run_training
from models.tokenizer import load_tokenizer
from models.training import StepMetrics
from tasks.common import artifact_key, cache_dir, link, store


@task(name="train-model")
def train_model(packed: PackedRef, tokenizer_ref: TokenizerRef, model_cfg: ModelConfig, train_cfg: TrainConfig) -> TrainRef:
    """A rerun with the same inputs resumes from the last checkpoint, or reuses a finished run."""
    logger = get_run_logger()
    st = store()
    progress_id = create_progress_artifact(0.0, description=f"training {model_cfg.preset}")
    every = max(1, train_cfg.max_steps // 50)

    def report(m: StepMetrics) -> None:
        if m.step % every == 0 or m.val_loss is not None:
            update_progress_artifact(progress_id, 100.0 * m.step / train_cfg.max_steps)
            val = f", val loss {m.val_loss:.4f}" if m.val_loss is not None else ""
            logger.info("step %d: loss %.4f%s, lr %.2e, %.0f tokens/s", m.step, m.loss, val, m.lr, m.tokens_per_s)

    tokenizer = load_tokenizer(st, tokenizer_ref, cache_dir())
    ref = run_training(st, packed, tokenizer_ref, tokenizer, model_cfg, train_cfg, cache_dir(), on_metrics=report)
    update_progress_artifact(progress_id, 100.0)
    if ref.loss_plot_uri:
        create_link_artifact(link(ref.loss_plot_uri), link_text="loss curve (PNG)", key=artifact_key("loss-curve", ref.run_id))
    logger.info("run %s: %d steps, final loss %.4f, %.1f s", ref.run_id, ref.steps, ref.final_train_loss, ref.wall_s)
    return ref
