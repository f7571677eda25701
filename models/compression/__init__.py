"""Compression: a run's precision variants measured beside fp32, structured pruning, and distillation into a
student."""
from llmops.models.compression.distill import DistillationError, budgeted, distill, student_config
from llmops.models.compression.pruning import PruneReport, prune
from llmops.models.compression.stage import compress_run
from llmops.models.compression.students import (
    TeacherRef,
    prune_model_dir,
    resolve_teacher,
    save_pruned,
    student_model,
    teacher_folder,
)

__all__ = [
    "compress_run",
    "DistillationError", "budgeted", "distill", "student_config",
    "PruneReport", "prune", "save_pruned",
    "TeacherRef", "prune_model_dir", "resolve_teacher", "student_model", "teacher_folder",
]
