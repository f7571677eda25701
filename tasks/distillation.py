"""Student stages: a structurally pruned copy of a run's model, and a student distilled from a teacher (live
progress, a summary table)."""
from __future__ import annotations

from typing import Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from llmops.infra.config import DistillConfig, ModelConfig, PruneConfig, TrainConfig
from llmops.models.compression import (
    TeacherRef,
    budgeted,
    distill,
    prune_model_dir,
    resolve_teacher,
    student_model,
    teacher_folder,
)
from llmops.models.data import load_tokenizer, read_split
from llmops.models.records import DatasetRef, PackedRef, PrunedRef, TokenizerRef, TrainRef
from llmops.models.training import StepMetrics
from llmops.tasks.core.context import ACCELERATOR_TAG, artifact_key, cache_dir, store, timeout_s
from llmops.tasks.training import step_reporter


@task(name="resolve-teacher", timeout_seconds=timeout_s("resolve-teacher"))
def resolve_teacher_task(model_name: str, teacher: str) -> TeacherRef:
    """A registered version or alias of ``model_name`` (downloaded), or a local model folder."""
    ref = resolve_teacher(store(), model_name, teacher, cache_dir())
    get_run_logger().info("teacher: %s", ref.label)
    return ref


@task(name="prune-model", timeout_seconds=timeout_s("prune-model"))
def prune_model(teacher: TeacherRef, dataset: DatasetRef, cfg: PruneConfig) -> PrunedRef:
    """A structurally pruned copy of the teacher, ranked on training documents (stored, reused on a rerun)."""
    st = store()
    folder, _ = teacher_folder(st, teacher, cache_dir())
    ref = prune_model_dir(st, folder, read_split(st, dataset, "train"), cfg, cache_dir())
    create_table_artifact([{"what": k, "before": b, "after": a} for k, (b, a) in {
        "parameters": (ref.parameters_before, ref.parameters_after), **ref.shape}.items()],
        key=artifact_key("pruning", teacher.label), description=f"keep {cfg.keep:.0%} ({cfg.axes}) of {teacher.label}")
    get_run_logger().info("pruned %s (%s): %d -> %d parameters, layers %d -> %d", teacher.label, cfg.axes,
                          ref.parameters_before, ref.parameters_after, *ref.shape["layers"])
    return ref


@task(name="distill-model", timeout_seconds=timeout_s("distill-model"), retries=1, retry_delay_seconds=10,
      tags=[ACCELERATOR_TAG])
def distill_model(packed: PackedRef, tokenizer_ref: TokenizerRef, teacher: TeacherRef, model_cfg: ModelConfig,
                  train_cfg: TrainConfig, cfg: DistillConfig, pruned: Optional[PrunedRef] = None) -> TrainRef:
    """The student (the pruned copy, else ``cfg.student_preset``) distilled from ``teacher``; a rerun with the same
    inputs resumes the student's run from its last checkpoint, or reuses it."""
    logger, st = get_run_logger(), store()
    student = student_model(st, model_cfg, cfg, pruned, cache_dir())
    name = "pruned copy" if pruned else student.preset
    progress_id = create_progress_artifact(0.0, key=artifact_key("distill-progress", teacher.label, name),
                                           description=f"distilling {name} from {teacher.label}")
    last: dict[str, StepMetrics] = {}
    step = step_reporter(logger, progress_id, budgeted(train_cfg, cfg))  # progress against the student's budget

    def report(m: StepMetrics) -> None:
        last["step"] = m
        step(m)

    folder, uri = teacher_folder(st, teacher, cache_dir())
    ref = distill(st, packed, tokenizer_ref, load_tokenizer(st, tokenizer_ref, cache_dir()), folder, student,
                  train_cfg, cfg, cache_dir(), teacher.version, on_metrics=report, teacher_uri=uri)
    update_progress_artifact(progress_id, 100.0)
    create_table_artifact([_summary(ref, teacher, last.get("step"))], key=artifact_key("distillation", ref.run_id),
                          description=f"student {name} distilled from {teacher.label}")
    logger.info("run %s (%s distilled from %s): %d steps, final loss %.4f, val loss %s, %.1f s", ref.run_id, name,
                teacher.label, ref.steps, ref.final_train_loss, ref.final_val_loss, ref.wall_s)
    return ref


def _summary(ref: TrainRef, teacher: TeacherRef, last: Optional[StepMetrics]) -> dict:
    d = ref.distillation
    return {"student_run": ref.run_id, "teacher": teacher.label, "loss": d.loss if d else None,
            "alpha": d.alpha if d else None, "temperature": d.temperature if d else None,
            "top_k": d.top_k if d else None, "steps": ref.steps, "parameters": ref.parameters,
            "teacher_val_loss": teacher.run.final_val_loss if teacher.run else None,
            "student_val_loss": ref.final_val_loss,
            "final_train_loss": round(ref.final_train_loss, 4),
            "final_divergence": round(last.kl, 4) if last is not None and last.kl is not None else None}
