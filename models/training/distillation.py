"""Knowledge distillation inside the training loop: a frozen teacher, and the divergence the student learns from.

The loop stays the one loop (``models/training/loop.py``): with a :class:`Teacher`, each micro-batch's loss is
``(1 - alpha) * cross-entropy + alpha * divergence``, the divergence between the teacher's and the student's
next-token distributions at the positions the cross-entropy scores (``compress.distill``; Hinton et al. for
forward KL, MiniLLM for reverse KL, TRL's GKD for generalized JSD). The teacher runs on the fly, under
``torch.no_grad``, on the same input ids and attention mask; it is never trained nor checkpointed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from llmops.infra.config import DistillConfig
from llmops.infra.store import content_key
from llmops.models.records import Distillation
from llmops.models.training.batching import IGNORE_INDEX, Batch


def divergence(student: torch.Tensor, teacher: torch.Tensor, loss: str, jsd_beta: float = 0.5) -> torch.Tensor:
    """Per-row divergence between two distributions given as log-probabilities (N, V): forward_kl is KL(T || S),
    reverse_kl KL(S || T), jsd the generalized Jensen-Shannon divergence of TRL's GKD ``generalized_jsd_loss``:
    ``beta * KL(T || M) + (1 - beta) * KL(S || M)`` with the mixture ``M = beta * T + (1 - beta) * S``."""
    if loss == "forward_kl":
        return _kl(teacher, student)
    if loss == "reverse_kl":
        return _kl(student, teacher)
    if loss == "jsd":
        mixture = torch.logsumexp(torch.stack([student + math.log(1 - jsd_beta), teacher + math.log(jsd_beta)]), 0)
        return jsd_beta * _kl(teacher, mixture) + (1 - jsd_beta) * _kl(student, mixture)
    raise ValueError(f"unknown distillation loss {loss!r}; known: forward_kl, reverse_kl, jsd")


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities."""
    return (p.exp() * (p - q)).sum(-1)


class Teacher:
    """A frozen teacher and the distillation term it gives a student's logits.

    Args:
        model: The teacher; put in eval mode with gradients off (moved to the training device by the loop).
        cfg: The loss, alpha, temperature, jsd_beta and top_k.
        vocab: The tokenizer's size. The distributions are compared over the first ``vocab`` logits of each model:
            a model whose embedding matrix is larger than the tokenizer (padded to a multiple, or grown to fit it)
            has logits for ids no text produces, so the teacher's and the student's logit dimensions may differ;
            both are truncated to ``vocab`` (and renormalized over it by the softmax).
    """

    def __init__(self, model: torch.nn.Module, cfg: DistillConfig, vocab: int):
        self.model, self.cfg, self.vocab = model.eval(), cfg, vocab
        self.model.requires_grad_(False)
        self._sum: Optional[torch.Tensor] = None
        self._count = 0

    def to(self, device: torch.device) -> Teacher:
        self.model.to(device)
        return self

    def summed_divergence(self, student_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The divergence summed over the batch's target positions (those the cross-entropy scores), times T².

        The logits at position t predict token t + 1, so positions whose next label is IGNORE_INDEX (padding) and
        the last position are left out. Computed in fp32; the step's mean is accumulated for
        :meth:`pop_step_mean`.
        """
        with torch.no_grad():
            teacher_logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                        use_cache=False).logits
        scored = batch.labels[:, 1:] != IGNORE_INDEX  # (B, T - 1)
        temperature = self.cfg.temperature
        student = student_logits[:, :-1, :self.vocab][scored].float() / temperature  # (N, V)
        teacher = teacher_logits[:, :-1, :self.vocab][scored].float() / temperature
        student_lp, teacher_lp = self._log_probs(student, teacher)
        summed = divergence(student_lp, teacher_lp, self.cfg.loss, self.cfg.jsd_beta).sum() * temperature ** 2
        detached = summed.detach()
        self._sum = detached if self._sum is None else self._sum + detached
        self._count += student.shape[0]
        return summed

    def _log_probs(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities over the vocabulary, or with top_k over the teacher's k likeliest tokens: the
        teacher's renormalized over them and the student's gathered there and renormalized too, so the term
        is a divergence between two distributions on the same support (0 when they agree)."""
        if self.cfg.top_k is None or self.cfg.top_k >= teacher.shape[-1]:
            return F.log_softmax(student, -1), F.log_softmax(teacher, -1)
        top, index = teacher.topk(self.cfg.top_k, dim=-1)
        return F.log_softmax(student.gather(-1, index), -1), F.log_softmax(top, -1)

    def pop_step_mean(self) -> float:
        """The mean divergence (times T²) per target position since the last call (one optimizer step), and reset."""
        total, count = self._sum, self._count
        self._sum, self._count = None, 0
        return float(total) / count if total is not None and count else 0.0


@dataclass(frozen=True)
class TeacherSpec:
    """What :func:`llmops.models.training.run.run_training` needs to distill: the loaded teacher (fp32) and its
    identity, which the run id and the run's record carry."""

    model: torch.nn.Module
    cfg: DistillConfig
    teacher: str  # store URI or local path of its model folder
    sha256: str  # of its model.safetensors
    version: Optional[int] = None

    def record(self) -> Distillation:
        return distillation_record(self.cfg, self.teacher, self.sha256, self.version)

    def build(self, vocab: int) -> Teacher:
        return Teacher(self.model, self.cfg, vocab)


def distillation_record(cfg: DistillConfig, teacher: str, sha256: str, version: Optional[int] = None) -> Distillation:
    """The lineage a distilled run records (and its id hashes): the teacher and the loss settings."""
    return Distillation(teacher=teacher, teacher_sha256=sha256, teacher_version=version, loss=cfg.loss,
                        alpha=cfg.alpha, temperature=cfg.temperature,
                        jsd_beta=cfg.jsd_beta if cfg.loss == "jsd" else None, top_k=cfg.top_k)


def distilled_run_id(base_id: str, record: Distillation) -> str:
    """The run id of a distillation: the id the same student, data and training config have without a teacher
    (:func:`llmops.models.training.run_id.run_identity`), hashed with the teacher's weights and the loss settings.

    Where the teacher was read from (path or URI) and its version number are left out: the same weights are the
    same teacher, so a rerun that downloads them elsewhere resumes the same run.
    """
    settings = record.model_dump(mode="json", exclude={"teacher", "teacher_version"})
    return content_key("distill-v1", base_id, json.dumps(settings, sort_keys=True, separators=(",", ":")))[:16]
