"""The records a drift check produces: per-signal results and the window's DriftReport (frozen pydantic)."""
from __future__ import annotations

from datetime import datetime
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["ok", "warn", "alert"]
Verdict = Literal["ok", "warn", "alert", "insufficient_data"]
Severity = Literal["none", "low", "medium", "high"]


class _Frozen(BaseModel):
    # "constants": an infinite KL or NaN statistic round-trips through drift.json instead of becoming null
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class SignalStats(_Frozen):
    """Everything measured for one signal in one window, before the alert policy judges it."""

    name: str
    kind: Literal["continuous", "categorical"]
    n_reference: int
    n_current: int = Field(description="Values in the window (records, or token occurrences for token_frequency)")
    missing: int = Field(0, description="Records of the window that lacked this value")
    psi: float = Field(description="Population Stability Index on the fixed reference bins, smoothed")
    kl: float = Field(description="KL(current || reference), nats, smoothed")
    js: float = Field(description="Jensen-Shannon distance, base 2, in [0, 1], unsmoothed")
    psi_noise_floor: float = Field(description="Expected PSI between two samples of one distribution at these sizes")
    test: Literal["ks", "chi2"]
    statistic: float
    p_value: float
    effect_size: float = Field(description="KS D for ks, Cramér's V for chi2")
    effect_size_name: Literal["ks_d", "cramers_v"]
    bins: list[str] = Field(description="Bin labels: '(a, b]' intervals or category names")
    reference_counts: list[int]
    current_counts: list[int]
    reference_mean: Optional[float] = None
    current_mean: Optional[float] = None
    test_sample: Optional[int] = Field(None, description="KS: window values in the test (a uniform sample of at most ks_window_sample)")
    design_effect: float = Field(1.0, description="chi2: variance inflation the noise floor and p-value were corrected for")


class SignalResult(SignalStats):
    """A signal's statistics with the policy's judgement."""

    status: Status
    report_only: bool = Field(description="Reported but never counted towards the window verdict")
    psi_effect: float = Field(description="The PSI the thresholds were applied to: psi - psi_noise_floor (>= 0) when debiased, else psi")
    p_adjusted: float = Field(description="p-value after the multiple-testing correction over the window's tests")
    significant: bool = Field(description="p_adjusted < alpha")
    psi_warn: float
    psi_alert: float


class DriftReport(_Frozen):
    """The result of checking one traffic window against a reference profile (written as drift.json)."""

    schema_version: Literal[1] = 1
    window_id: str
    model_name: str
    model_version: int
    start: Optional[datetime] = None
    end: Optional[datetime] = None
    created_at: datetime
    verdict: Verdict
    severity: Severity
    n_samples: int = Field(description="Records in the window")
    min_samples: int
    alerting: list[str] = Field(description="Signals whose status is alert (report-only ones excluded)")
    warning: list[str] = Field(description="Signals whose status is warn (report-only ones excluded)")
    signals: dict[str, SignalResult]
    skipped: dict[str, str] = Field(default_factory=dict, description="Signals not tested, with the reason")
    correction: Literal["bonferroni", "holm"]
    alpha: float
    n_tests: int = Field(description="Size of the family the p-values were corrected over")
    notes: list[str] = Field(default_factory=list)
    out_dir: Optional[str] = None
    files: dict[str, str] = Field(default_factory=dict, description="Role -> file name inside out_dir")

    @property
    def drifted(self) -> bool:
        return self.verdict == "alert"


class DriftOutcome(_Frozen):
    """What a monitoring run decided, small enough to be a flow result; the details are in drift.json."""

    window_id: str
    model_name: str
    model_version: int
    verdict: Verdict
    severity: Severity
    n_samples: int
    alerting_signals: list[str]
    warning_signals: list[str]
    drift_uri: str
    report_html: Optional[str] = Field(None, description="Evidently's HTML report, when written")
    summary_uri: str
    trend_uri: Optional[str] = Field(None, description="trend.md: PSI per signal over every checked window (trend.png beside it)")
    event_emitted: bool = False
    event_reason: str = Field("", description="Why an event was or was not emitted (debounce, cooldown)")
