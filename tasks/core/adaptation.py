"""A drift-triggered retrain's plan: the adaptation data from the event's window and the warm-start configuration.

No Prefect here: the retrain flow's task calls it, and so does the adaptation benchmark.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

from llmops.infra.config import PipelineConfig
from llmops.infra.store import ArtifactStore
from llmops.models.data import NotEnoughTraffic, adaptation_snapshot, load_ref
from llmops.models.records import DatasetRef
from llmops.models.release import Registry

log = logging.getLogger("llmops.adapt")


@dataclass(frozen=True)
class AdaptationPlan:
    """What the pipeline runs instead of ingest: this dataset, with this (warm-start) configuration."""

    dataset: DatasetRef
    config: PipelineConfig


def warm_start_config(config: PipelineConfig, base_folder: Path) -> PipelineConfig:
    """``config`` continuing training from the model in ``base_folder`` with its tokenizer, on ``adapt``'s schedule
    and budget (a short re-warm to a lower peak, then cosine decay)."""
    adapt = config.adapt
    return config.model_copy(update={
        "model": config.model.model_copy(update={"pretrained": str(base_folder)}),
        "tokenizer": config.tokenizer.model_copy(update={"kind": "bpe", "path": None}),  # bpe: the base's own
        "train": config.train.model_copy(update={
            "lr": adapt.lr, "warmup_steps": adapt.warmup_steps, "min_lr_ratio": adapt.min_lr_ratio,
            "max_minutes": adapt.max_minutes, "time_budget_s": None, "max_steps": adapt.max_steps,
            "lora": adapt.lora,
        }),
    })


def plan_adaptation(store: ArtifactStore, config: PipelineConfig, start: datetime, end: datetime,
                    cache_dir: Path) -> tuple[Optional[AdaptationPlan], str]:
    """(the plan, why) for adapting production to the traffic of ``[start, end)``; no plan (and why not) when there
    is no production version, it records no dataset, or the window has too little usable traffic."""
    registry = Registry(store, config.model_name)
    base = registry.alias("production")
    if base is None:
        return None, f"{config.model_name} has no production version to continue from"
    metadata = registry.manifest(base).metadata
    if metadata is None:
        return None, f"{config.model_name} v{base} records no dataset to replay"
    try:
        dataset = adaptation_snapshot(store, model_name=config.model_name, data=config.data, adapt=config.adapt,
                                      base_version=base, base_dataset=load_ref(store, metadata.dataset),
                                      start=start, end=end, cache_dir=cache_dir,
                                      min_holdout=config.monitor.min_samples)
    except NotEnoughTraffic as exc:
        return None, str(exc)
    plan = AdaptationPlan(dataset, warm_start_config(config, registry.download(base, cache_dir)))
    a = dataset.adaptation
    return plan, (f"continuing v{base} on {a.traffic_train} traffic prompts + {a.replay} replayed documents; "
                  f"{a.holdout} held out; excluded {a.eval_overlap} overlapping evaluation documents, "
                  f"{a.holdout_overlap} overlapping held-out prompts; redacted {a.redacted}, hook dropped "
                  f"{a.dropped_by_hook}")
