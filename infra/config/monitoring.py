"""The monitor and schedule sections: drift thresholds and policy, traffic compaction, and when deployments run."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from llmops.infra.config.base import Frozen

_DASK_LOCAL = re.compile(r"dask-local:([0-9]+)")
_DASK_ADDRESS = re.compile(r"(tcp|tls|ws|wss)://[^\s/:]+:[0-9]+")


@dataclass(frozen=True)
class ClusterSpec:
    """``monitor.cluster`` parsed: where the monitor flow's window check reads the window's partitions.

    Attributes:
        kind: ``local`` (this process, no Dask), ``dask-local`` (a temporary Dask LocalCluster started for
            the check), ``dask`` (the Dask scheduler at ``address``).
        workers: Worker processes of the temporary LocalCluster.
        address: The scheduler's address.
    """

    kind: Literal["local", "dask-local", "dask"]
    workers: int = 0
    address: Optional[str] = None


def parse_cluster(value: str) -> ClusterSpec:
    """``"local"``, ``"dask-local:N"`` (N >= 1 worker processes) or a Dask scheduler address
    (``tcp://host:port``, or tls://, ws://, wss://); a ValueError saying so for anything else."""
    if value == "local":
        return ClusterSpec("local")
    if (local := _DASK_LOCAL.fullmatch(value)) and int(local.group(1)) >= 1:
        return ClusterSpec("dask-local", workers=int(local.group(1)))
    if _DASK_ADDRESS.fullmatch(value):
        return ClusterSpec("dask", address=value)
    raise ValueError(f"monitor.cluster must be 'local' (one process), 'dask-local:N' (a temporary Dask LocalCluster "
                     f"of N >= 1 worker processes) or a Dask scheduler address such as tcp://scheduler:8786; got "
                     f"{value!r}")


class SignalThresholds(Frozen):
    """PSI thresholds for one drift signal, overriding the monitor-wide ones."""

    psi_warn: float = Field(0.1, gt=0, description="This signal's warn level, in place of monitor.psi_warn.")
    psi_alert: float = Field(0.2, gt=0, description="This signal's alert level, in place of monitor.psi_alert.")

    @model_validator(mode="after")
    def _check(self) -> SignalThresholds:
        if self.psi_warn > self.psi_alert:
            raise ValueError(f"psi_warn ({self.psi_warn}) exceeds psi_alert ({self.psi_alert})")
        return self


class MonitorConfig(Frozen):
    """How captured traffic is checked for drift against the reference profile, built from the version's own
    completions of validation documents. Each signal (prompt and completion features, token frequencies, optionally
    semantic distance) gets a PSI effect and a p-value corrected over the signals tested: it warns on the effect
    alone and alerts on effect and significance; the domain classifier alerts on the share of the window unlike the
    reference. consecutive_windows alerting windows outside the cooldown emit llmops.drift.detected, which starts a
    retrain (see adapt). Also sets traffic compaction and where the window check runs (cluster)."""

    window_minutes: int = Field(60, ge=1, description="Length of the traffic window a scheduled run checks.")
    min_samples: int = Field(100, ge=10, description="Below this many requests no verdict is given.")
    reference_size: int = Field(1000, ge=50, description="Validation documents scored into the reference profile.")
    n_bins: int = Field(10, ge=2, description="Quantile bins fixed from the reference for continuous signals.")
    top_k_tokens: int = Field(50, ge=1, description="Token-frequency signal: reference's top-K tokens plus 'other'.")
    psi_warn: float = Field(
        0.1, gt=0, description="A signal warns when its PSI (debiased: psi_debias) reaches this, significant or not."
    )
    psi_alert: float = Field(
        0.2, gt=0,
        description="A signal alerts when its PSI reaches this and its corrected p-value is below alpha; at least "
        "psi_warn.",
    )
    alpha: float = Field(
        0.01, gt=0, lt=1, description="Family-wise significance, corrected over the signals tested (see correction)."
    )
    consecutive_windows: int = Field(1, ge=1, description="Alert only after this many drifting windows in a row.")
    cooldown_minutes: float = Field(60.0, ge=0, description="No new drift event this long after the last one.")
    correction: Literal["bonferroni", "holm"] = Field(
        "bonferroni", description="Multiple-testing correction over the signals tested in a window."
    )
    psi_high: float = Field(
        0.5, gt=0, description="Severity 'high' from this max PSI up (or psi_alert if larger); 'medium' below."
    )
    report_only_signals: list[str] = Field(
        default_factory=lambda: ["latency_ms"],
        description="Signals computed and reported but never alerting (latency depends on the serving hardware).",
    )
    signal_thresholds: dict[str, SignalThresholds] = Field(
        default_factory=dict,
        description="Per-signal PSI thresholds, e.g. {token_frequency: {psi_warn: 0.15, psi_alert: 0.3}}.",
    )
    smoothing: float = Field(
        0.5, gt=0, description="Pseudo-count added to every bin of both histograms before PSI/KL (0.5: Jeffreys)."
    )
    tail_quantile: float = Field(
        0.01, ge=0, lt=0.1,
        description="Extra bin edges at this reference quantile and 1 minus it (0 disables): mass moving into the "
        "tails shows in PSI.",
    )
    psi_debias: bool = Field(
        True,
        description="Judge PSI minus its expected value under no drift ((bins-1)(1/n_ref+1/n_cur)), so small "
        "windows do not warn on noise.",
    )
    ks_sample_size: int = Field(5000, ge=100, description="Reference values kept in the profile for the KS test.")
    ks_window_sample: int = Field(
        20_000, ge=100,
        description="Window values kept (uniform reservoir) per signal for the KS test; counts and means use "
        "every value.",
    )
    common_token_coverage: float = Field(
        0.95, gt=0, lt=1,
        description="rare_token_share: the common-token set is the fewest ids covering this share of the "
        "reference's token occurrences.",
    )
    evidently_report: bool = Field(True, description="Also write Evidently's HTML/JSON drift report for each window.")
    compact_traffic: bool = Field(
        True,
        description="Before each scheduled check, compact the model's closed traffic hours into Parquet "
        "(docs/monitoring.md).",
    )
    compact_grace_minutes: float = Field(
        10.0, gt=0,
        description="An hour is closed, and may be compacted, this long after it ended; must exceed "
        "serve.flush_interval_s.",
    )
    compact_lookback_hours: int = Field(
        48, ge=1,
        description="The scheduled compaction looks at closed hours this far back (`llmops compact` at all of "
        "them).",
    )
    compact_delete_jsonl: bool = Field(
        False, description="Delete an hour's JSONL files once the manifest of its compacted Parquet file is committed.",
    )
    domain_classifier: bool = Field(
        True,
        description="The domain_classifier signal: can a logistic regression on the prompts' character and word "
        "n-grams tell the window from the reference? Catches a minority of new prompts the per-feature tests "
        "dilute, and names the n-grams that changed (docs/monitoring.md).",
    )
    classifier_min_share: float = Field(
        0.05, gt=0, lt=1,
        description="domain_classifier alerts (or warns) only when at least this share of the window's prompts is "
        "estimated to be unlike the reference, besides being significant.",
    )
    classifier_window_sample: int = Field(
        2000, ge=100, description="Prompts of a window the domain classifier reads, a uniform sample when it has more.",
    )
    classifier_reference_size: int = Field(
        2000, ge=100, description="Reference prompts kept in the reference profile for the domain classifier.",
    )
    semantic_model: Optional[str] = Field(
        None,
        description="Semantic drift (off when null): a sentence encoder loadable by transformers "
        "AutoModel/AutoTokenizer (local path or hub id); adds the semantic_distance signal, paid in one encoder "
        "pass per prompt (docs/monitoring.md).",
    )
    semantic_batch_size: int = Field(32, ge=1, description="Prompts per encoder forward pass (semantic_model).")
    semantic_max_length: int = Field(
        256, ge=8, description="Tokens of a prompt the encoder reads; the rest is cut (semantic_model)."
    )
    semantic_window_sample: int = Field(
        2000, ge=100,
        description="Prompts of a window embedded for semantic_distance, a uniform sample when it has more: the "
        "encoder is the cost.",
    )
    cluster: str = Field(
        "local",
        description="Where the monitor flow's drift check reads the window's hour partitions: 'local' (one process, "
        "no Dask), 'dask-local:N' (a Dask LocalCluster of N worker processes started for each check) or a Dask "
        "scheduler address, e.g. tcp://scheduler:8786, whose workers have llmops installed and reach the store. "
        "The statistics are the same everywhere (docs/monitoring.md#a-window-over-a-cluster-monitorcluster).",
    )

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str) -> str:
        parse_cluster(value)
        return value

    @model_validator(mode="after")
    def _check(self) -> MonitorConfig:
        if self.psi_warn > self.psi_alert:
            raise ValueError(f"psi_warn ({self.psi_warn}) exceeds psi_alert ({self.psi_alert})")
        return self


class ScheduleConfig(Frozen):
    """When the deployments run by themselves (``llmops deploy`` / ``llmops up``)."""

    retrain_cron: Optional[str] = Field(
        "0 3 * * 0", description="Scheduled retraining, independent of drift (default: Sundays 03:00)."
    )
    monitor_every_minutes: Optional[float] = Field(
        60, gt=0,
        description="Run the drift check on this interval (fractions allowed: 0.25 is every 15 s); null disables.",
    )
    timezone: str = Field(
        "UTC", description="IANA time zone (e.g. Europe/Paris) the retrain cron is read in and intervals anchored to."
    )
    retrain_delay_minutes: float = Field(
        0.0, ge=0, description="Review window: a drift-triggered retrain is scheduled this long after the event."
    )
