"""Launching a distributed training run: its job in the store, torchrun as a subprocess, the ranks' output streamed
back as log lines and progress records (the ranks run ``llmops.models.training.worker``)."""
from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict

from llmops.infra.config import DistillConfig, ModelConfig, TrainConfig
from llmops.models.records import Distillation, PackedRef, PreflightReport, TokenizerRef, TrainRef
from llmops.models.training.checkpoint import TrainingError
from llmops.models.training.distillation import distilled_run_id
from llmops.models.training.distributed import torchrun_command
from llmops.models.training.loop import StepMetrics
from llmops.models.training.run_id import run_identity

log = logging.getLogger("llmops.distributed")

# Rank 0 prints its progress as prefixed JSON lines; the launcher turns them back into records.
METRICS_PREFIX, PREFLIGHT_PREFIX = "@llmops-metrics ", "@llmops-preflight "
TAIL_LINES = 60


class DistributedTeacher(BaseModel):
    """A distillation's teacher as the ranks load it: its folder on this node, else its store URI (``record``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    record: Distillation
    cfg: DistillConfig


class DistributedJob(BaseModel):
    """What every rank needs to run the same training run; stored at ``runs/<id>/job.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    packed: PackedRef
    tokenizer: TokenizerRef
    model: ModelConfig
    train: TrainConfig
    teacher: Optional[DistributedTeacher] = None


def launch_run(store, packed: PackedRef, tokenizer_ref: TokenizerRef, model_cfg: ModelConfig, train_cfg: TrainConfig,
               cache_dir: Path, on_line: Callable[[str], None] = print,
               on_metrics: Optional[Callable[[StepMetrics], None]] = None,
               on_preflight: Optional[Callable[[PreflightReport], None]] = None,
               teacher: Optional[DistributedTeacher] = None) -> TrainRef:
    """Run training under torchrun as ``train.distributed`` says and return the record rank 0 committed.

    The job goes to the store (``runs/<id>/job.json``) so the command is the same on every node;
    the workers' output is passed line by line to ``on_line`` (progress to ``on_metrics`` and
    ``on_preflight``). A failed run raises :class:`TrainingError` with the tail of that output. With ``teacher``
    every rank loads it and the student is distilled (the run id is the distillation's).
    """
    run_id, _ = run_identity(packed, tokenizer_ref, model_cfg, train_cfg)
    if teacher is not None:
        run_id = distilled_run_id(run_id, teacher.record)
    prefix = f"runs/{run_id}"
    if store.exists(f"{prefix}/manifest.json"):
        return TrainRef.model_validate(store.get_json(f"{prefix}/manifest.json"))
    job = DistributedJob(packed=packed, tokenizer=tokenizer_ref, model=model_cfg, train=train_cfg, teacher=teacher)
    store.put_json(f"{prefix}/job.json", job.model_dump(mode="json"))
    cmd = torchrun_command(train_cfg.distributed, run_id,
                           ["--store", store.uri, "--job", f"{prefix}/job.json", "--cache-dir", str(cache_dir)])
    on_line("launching: " + " ".join(cmd))
    rc, tail = _stream(cmd, on_line, on_metrics, on_preflight)
    if rc != 0:
        raise TrainingError(f"distributed training failed (torchrun exited with {rc}); the last lines of its output:\n"
                            + "\n".join(tail))
    if not store.exists(f"{prefix}/manifest.json"):
        raise TrainingError(f"torchrun finished but rank 0 committed no {prefix}/manifest.json:\n" + "\n".join(tail))
    return TrainRef.model_validate(store.get_json(f"{prefix}/manifest.json"))


def _stream(cmd: list[str], on_line, on_metrics, on_preflight) -> tuple[int, list[str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env) as proc:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            # stderr shares the pipe: a progress bar without a newline may precede a record on its line
            for prefix, handle in ((METRICS_PREFIX, on_metrics), (PREFLIGHT_PREFIX, on_preflight)):
                if prefix in line:
                    line, _, record = line.partition(prefix)
                    if handle:
                        handle(StepMetrics(**json.loads(record)) if prefix == METRICS_PREFIX
                               else PreflightReport.model_validate_json(record))
            if line.strip():
                tail.append(line)
                on_line(line)
    return proc.returncode, list(tail)
