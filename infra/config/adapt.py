"""The adapt section: how a drift-triggered retrain learns the new traffic and proves it."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from llmops.infra.config.base import Frozen
from llmops.infra.config.train import LoraSettings


class AdaptConfig(Frozen):
    """A drift-triggered retrain: continue training production on the drifted traffic mixed with a replay of its data.

    The traffic of the drift event's window is redacted, stripped of anything that overlaps an evaluation
    document, and split by hash into training prompts and a held-out slice the candidate never sees; the gate
    judges the held-out slice (must improve) and production's own test split (must not regress beyond
    ``max_regression``). Scheduled retrains stay full retrains.
    """

    on_drift: Literal["warm_start", "full"] = Field(
        "warm_start",
        description="warm_start: continue training the production model on traffic + replay (falls back to a full "
        "retrain when there is no production model or too little usable traffic); full: retrain from scratch on "
        "data.sources.",
    )
    traffic_share: float = Field(
        0.1, gt=0, le=1,
        description="Share of the training documents that are drifted traffic; the rest is a replay of production's "
        "training split (1: no replay). 0.1 kept production's test split from regressing on both shifts measured "
        "here, where 0.2 and more forgot up to 2% (docs/adaptation.md).",
    )
    holdout_fraction: float = Field(
        0.3, gt=0, lt=1,
        description="Share of the usable traffic held out for the gate and the new reference profile (at least "
        "monitor.min_samples prompts, which a reference profile needs).",
    )
    max_holdout: int = Field(2000, ge=10, description="Held-out traffic records at most; the rest trains.")
    max_traffic_records: int = Field(
        50_000, ge=10, description="Traffic records read from the window at most (a uniform sample beyond)."
    )
    min_traffic_records: int = Field(
        30, ge=1, description="Fewer traffic prompts than this left to train on: a full retrain instead (logged)."
    )
    leakage_ngram: int = Field(
        13, ge=3,
        description="A traffic record sharing a run of this many words with an evaluation document (or equal to one) "
        "is excluded from training (GPT-3's decontamination uses 13).",
    )
    max_minutes: Optional[float] = Field(0.75, gt=0, description="Wall-clock budget of the continued training.")
    max_steps: int = Field(
        1000, ge=1,
        description="Optimizer steps of the continued training at most, in place of train.max_steps (max_minutes may "
        "stop it sooner).",
    )
    lr: float = Field(
        2e-3, gt=0,
        description="Peak learning rate of the continued training: re-warmed to two thirds of a fresh run's, then "
        "cosine decay to lr * min_lr_ratio.",
    )
    warmup_steps: int = Field(
        10, ge=0, description="Steps of linear re-warming to lr of the continued training, in place of "
        "train.warmup_steps."
    )
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="The continued training's cosine decay ends at lr * min_lr_ratio (in place of "
        "train.min_lr_ratio)."
    )
    lora: Optional[LoraSettings] = Field(None, description="Train LoRA adapters on production instead of every weight.")
    max_regression: float = Field(
        0.01, ge=0,
        description="On production's own test split the candidate may be worse by at most this share of production's "
        "bits/byte (upper end of the paired CI).",
    )
    min_improvement: float = Field(
        0.0, ge=0, description="Bits/byte the candidate must gain on the held-out traffic (upper end of the CI)."
    )
