"""Knowledge distillation as a stage: a student trained on the teacher's data with the teacher's next-token
distributions as a second target, in the training loop (models/training/distillation.py), as a run of its own.

The student is a preset (``compress.distill.student_preset``, sized to the tokenizer) or a folder to fine-tune
(``ModelConfig(pretrained=...)``: a pruned copy of the teacher, healed by distillation). Its run lives under
``runs/<run-id>/`` like any run, resumes like any run, and its record says ``method="distill"``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from transformers import PreTrainedTokenizerBase

from llmops.infra.config import DistillConfig, ModelConfig, TrainConfig
from llmops.infra.store import ArtifactStore, sha256_file
from llmops.models.model.loading import load_model, load_tokenizer
from llmops.models.model.pretrained import pretrained_config
from llmops.models.records import PackedRef, PreflightReport, TokenizerRef, TrainRef
from llmops.models.training.distillation import TeacherSpec, distillation_record
from llmops.models.training.launcher import DistributedTeacher, launch_run
from llmops.models.training.loop import StepMetrics
from llmops.models.training.run import run_training

log = logging.getLogger("llmops.compression")


class DistillationError(ValueError):
    """The teacher cannot teach this student on this data (another vocabulary, too small an output layer)."""


def student_config(cfg: DistillConfig, base: ModelConfig) -> ModelConfig:
    """The student's model section: ``base`` (its attention kernel) with the student's preset and overrides, trained
    from scratch (no ``pretrained``)."""
    return base.model_copy(update={"preset": cfg.student_preset, "overrides": dict(cfg.student_overrides),
                                   "pretrained": None})


def check_vocabulary(teacher_tokenizer: PreTrainedTokenizerBase, tokenizer: PreTrainedTokenizerBase,
                     teacher_vocab_size: int) -> None:
    """Raise :class:`DistillationError` unless the teacher reads the data's token ids as the data's tokenizer
    wrote them, and scores every one of them."""
    theirs, ours = teacher_tokenizer.get_vocab(), tokenizer.get_vocab()
    if theirs != ours:
        by_id_theirs = {i: t for t, i in theirs.items()}
        by_id_ours = {i: t for t, i in ours.items()}
        first = next(i for i in sorted(set(by_id_theirs) | set(by_id_ours)) if by_id_theirs.get(i) != by_id_ours.get(i))
        raise DistillationError(
            f"the teacher's tokenizer ({len(theirs)} tokens) is not the data's ({len(ours)} tokens): the first "
            f"difference is id {first}, {by_id_theirs.get(first)!r} for the teacher and {by_id_ours.get(first)!r} "
            f"for the data; distill on data tokenized with the teacher's tokenizer")
    if teacher_vocab_size < len(tokenizer):
        raise DistillationError(f"the teacher's output layer scores {teacher_vocab_size} ids but the tokenizer has "
                                f"{len(tokenizer)}: it cannot be the teacher of this data")


def budgeted(train_cfg: TrainConfig, cfg: DistillConfig) -> TrainConfig:
    """``train_cfg`` with the student's own wall-clock budget (``compress.distill.max_minutes``) when set."""
    if cfg.max_minutes is None:
        return train_cfg
    return train_cfg.model_copy(update={"max_minutes": cfg.max_minutes, "time_budget_s": None})


def distill(store: ArtifactStore, packed: PackedRef, tokenizer_ref: TokenizerRef, tokenizer: PreTrainedTokenizerBase,
            teacher_dir: Path, student: ModelConfig, train_cfg: TrainConfig, cfg: DistillConfig, cache_dir: Path,
            teacher_version: Optional[int] = None, on_metrics: Optional[Callable[[StepMetrics], None]] = None, *,
            teacher_uri: Optional[str] = None,
            on_preflight: Optional[Callable[[PreflightReport], None]] = None) -> TrainRef:
    """Distill ``student`` from the model in ``teacher_dir`` (a save_pretrained folder with its tokenizer).

    The vocabularies are checked before anything trains (:class:`DistillationError`). The teacher is loaded in
    fp32 and stays frozen; the run id is the plain run's (``student``, ``train_cfg``, data) hashed with the
    teacher's weights and ``cfg``'s loss settings, so a rerun resumes or reuses it.

    Args:
        teacher_version: The teacher's registry version, recorded when known.
        teacher_uri: Where the teacher lives in the store (recorded instead of the local folder).
    """
    teacher_dir = Path(teacher_dir)
    check_vocabulary(load_tokenizer(teacher_dir), tokenizer, pretrained_config(str(teacher_dir)).vocab_size)
    identity = (teacher_uri or str(teacher_dir.resolve()), sha256_file(teacher_dir / "model.safetensors"))
    if train_cfg.distributed.enabled:  # every rank loads the teacher itself
        record = distillation_record(cfg, *identity, teacher_version)
        return launch_run(store, packed, tokenizer_ref, student, budgeted(train_cfg, cfg), cache_dir,
                          on_line=log.info, on_metrics=on_metrics, on_preflight=on_preflight,
                          teacher=DistributedTeacher(path=str(teacher_dir.resolve()), record=record, cfg=cfg))
    model, _ = load_model(teacher_dir)
    spec = TeacherSpec(model, cfg, *identity, teacher_version)
    log.info("distilling %s from %s (%s, alpha %g, temperature %g%s)", student.pretrained or student.preset,
             spec.teacher, cfg.loss, cfg.alpha, cfg.temperature, f", top-{cfg.top_k}" if cfg.top_k else "")
    return run_training(store, packed, tokenizer_ref, tokenizer, student, budgeted(train_cfg, cfg), cache_dir,
                        on_metrics=on_metrics, on_preflight=on_preflight, teacher=spec)
