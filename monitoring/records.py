"""What monitoring reads and writes: reference profiles, per-signal results, drift reports, outcomes and trends.

Frozen pydantic models, JSON in the store (``reference_profile.json``, ``drift.json``) and through Prefect.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmops.monitoring.signals import SIGNALS

Status = Literal["ok", "warn", "alert"]
CLASSIFIER_SIGNAL = "domain_classifier"
Verdict = Literal["ok", "warn", "alert", "insufficient_data"]
Severity = Literal["none", "low", "medium", "high"]


class _Frozen(BaseModel):
    # "constants": an infinite KL or NaN statistic round-trips through drift.json instead of becoming null
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class _Plain(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
    test_sample: Optional[int] = Field(
        None, description="KS: window values in the test (a uniform sample of at most ks_window_sample)"
    )
    design_effect: float = Field(
        1.0, description="chi2: variance inflation the noise floor and p-value were corrected for"
    )


class SignalResult(SignalStats):
    """A signal's statistics with the policy's judgement."""

    status: Status
    report_only: bool = Field(description="Reported but never counted towards the window verdict")
    psi_effect: float = Field(
        description="The PSI the thresholds were applied to: psi - psi_noise_floor (>= 0) when debiased, else psi"
    )
    p_adjusted: float = Field(description="p-value after the multiple-testing correction over the window's tests")
    significant: bool = Field(description="p_adjusted < alpha")
    psi_warn: float
    psi_alert: float


class NgramWeight(_Frozen):
    ngram: str = Field(description="The n-gram and its kind, e.g. \"'thou' (word)\" or \"'def' (char)\"")
    weight: float = Field(description="Its logistic-regression weight: > 0 leans to the window, < 0 to the reference")


class ClassifierResult(_Frozen):
    """The domain classifier of a window (``llmops.monitoring.classifier``): can its prompts be told from the
    reference's? A multivariate signal judged beside the per-feature ones, in the same multiple-testing family."""

    name: Literal["domain_classifier"] = CLASSIFIER_SIGNAL
    n_reference: int = Field(description="Reference prompts used (half fitted the classifier, half were scored)")
    n_current: int = Field(description="Window prompts used, a uniform sample when the window had more")
    auc: float = Field(description="ROC AUC of the held-out scores (0.5: indistinguishable)")
    p_rank: float = Field(description="Mann-Whitney U test of the held-out scores (a shift of the whole window)")
    p_tail: float = Field(description="Fisher's exact test on the top decile of held-out scores (a minority shift)")
    p_value: float = Field(description="2 x the smaller of p_rank and p_tail")
    p_adjusted: float = Field(description="p_value after the window's multiple-testing correction")
    significant: bool
    new_share: float = Field(description="Estimated least share of the window's prompts unlike the reference (the "
                             "effect): a point estimate, a few percent under no drift")
    min_share: float = Field(description="monitor.classifier_min_share: the effect an alert needs")
    status: Status
    report_only: bool
    reference_ngrams: list[NgramWeight] = Field(description="The n-grams that most mark a reference prompt")
    current_ngrams: list[NgramWeight] = Field(description="The n-grams that most mark a window prompt: what changed")
    seconds: float


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
    classifier: Optional[ClassifierResult] = Field(None, description="The domain classifier, when it ran")
    correction: Literal["bonferroni", "holm"]
    alpha: float
    n_tests: int = Field(description="Size of the family the p-values were corrected over")
    notes: list[str] = Field(default_factory=list)
    out_dir: Optional[str] = None
    files: dict[str, str] = Field(default_factory=dict, description="Role -> file name inside out_dir")

    @property
    def drifted(self) -> bool:
        return self.verdict == "alert"


class DriftEvent(_Frozen):
    """The payload of ``llmops.drift.detected``; a drift-triggered retrain receives it whole as a parameter."""

    model_name: str
    model_version: int
    window_id: str
    window_start: Optional[datetime] = None
    window_end: Optional[datetime] = None
    severity: Severity
    signals: list[str] = Field(description="The alerting signals")
    report: Optional[str] = Field(None, description="URI of the window's folder (drift.json, report.html, summary.md)")


class LedgerEntry(_Frozen):
    """The last drift event emitted for a model: the cooldown is measured from it."""

    at: datetime
    window_id: str
    event_id: Optional[str] = None


class DriftOutcome(_Frozen):
    """What a monitoring run decided, small enough to be a flow result; the details are in drift.json."""

    window_id: str
    start: Optional[datetime] = None
    end: Optional[datetime] = None
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
    trend_uri: Optional[str] = Field(
        None, description="trend.md: PSI per signal over every checked window (trend.png beside it)"
    )
    event_emitted: bool = False
    event_reason: str = Field("", description="Why an event was or was not emitted (debounce, cooldown)")

    @classmethod
    def of(cls, report: DriftReport, *, trend_uri: Optional[str], event_emitted: bool, event_reason: str
           ) -> DriftOutcome:
        """The outcome of a checked window (its files are in ``report.out_dir``) and the event decision."""
        base = (report.out_dir or "").rstrip("/")
        html = report.files.get("report_html")
        return cls(window_id=report.window_id, start=report.start, end=report.end, model_name=report.model_name,
                   model_version=report.model_version,
                   verdict=report.verdict, severity=report.severity, n_samples=report.n_samples,
                   alerting_signals=report.alerting, warning_signals=report.warning, drift_uri=f"{base}/drift.json",
                   report_html=f"{base}/{html}" if html else None, summary_uri=f"{base}/summary.md",
                   trend_uri=trend_uri, event_emitted=event_emitted, event_reason=event_reason)


SCHEMA_VERSION = 2  # of ReferenceProfile
SEMANTIC_SIGNAL = "semantic_distance"


class SummaryStats(_Plain):
    n: int
    mean: float
    std: float
    min: float
    p05: float
    p50: float
    p95: float
    max: float


class ContinuousProfile(_Plain):
    """Reference bins of a continuous signal: right-closed, open-ended at both ends.

    Bin 0 is ``(-inf, edges[0]]``, bin i is ``(edges[i-1], edges[i]]``, the last ``(edges[-1], inf)``.
    """

    edges: list[float] = Field(description="Inner bin edges: deduplicated quantiles of the fitting half, increasing")
    counts: list[int] = Field(description="Values of the counting half per bin (len(edges) + 1)")
    sample: list[float] = Field(description="Sorted deterministic subsample of the counting half, for KS")
    stats: SummaryStats


class CategoricalProfile(_Plain):
    """Reference categories of a categorical signal; the last one is the catch-all '__other__'."""

    categories: list[str]
    counts: list[int]
    design_effect: float = Field(
        1.0,
        description="Variance inflation of the shares over a multinomial sample (token_frequency: tokens cluster "
        "in prompts)",
    )


class SemanticProfile(_Plain):
    """What a window's prompts are embedded with and scored against (``semantic_distance``)."""

    model: str = Field(description="Local path or hub id of the sentence encoder (AutoModel + AutoTokenizer)")
    max_length: int = Field(description="Tokens per prompt the encoder read; longer prompts were truncated")
    centroid: list[float] = Field(description="Unit mean direction of the fitting half's embeddings")


class ReferenceProfile(_Plain):
    """What a window is compared against; monitoring a window costs O(window), never O(reference).

    Schema 2 fits bins, top-K tokens and the common-token set on one half of the reference records
    and counts the other half (``fit_records`` / ``count_records``). Schema 1 profiles (fitted and
    counted on the same records) are still read; a check with one notes the upward PSI bias.
    """

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    model_name: str
    model_version: int
    model_variant: Optional[str] = Field(
        None, description="The variant (fp32, int8, bf16) whose outputs were profiled, when all records share one"
    )
    created_at: datetime
    n_records: int
    n_bins: int
    tail_quantile: float = 0.0
    top_k_tokens: int
    fit_records: int = Field(
        0, description="Records the bins, top-K and common tokens were fitted on (0: schema 1, no split)"
    )
    count_records: int = Field(0, description="Records counted into the bins, categories and KS samples")
    common_token_coverage: Optional[float] = None
    common_tokens: list[int] = Field(
        default_factory=list, description="Sorted ids of the common-token set (rare_token_share)"
    )
    continuous: dict[str, ContinuousProfile]
    categorical: dict[str, CategoricalProfile]
    skipped: dict[str, str] = Field(default_factory=dict, description="Signals with no reference values, and why")
    semantic: Optional[SemanticProfile] = Field(
        None, description="The encoder and centroid of semantic_distance (None: off)"
    )
    texts: list[str] = Field(
        default_factory=list,
        description="A seeded sample of the reference prompts (monitor.classifier_reference_size, each cut to "
        "2,000 characters) for the domain classifier; empty in profiles made before it, which skip that signal",
    )

    @property
    def signals(self) -> list[str]:
        """Profiled signal names, in registry order."""
        return [n for n in SIGNALS if n in self.continuous or n in self.categorical]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> ReferenceProfile:
        """Parse a profile; a clear ValueError when the text is not one."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ValueError(f"not a valid reference profile: {exc.error_count()} error(s); first: "
                             f"{'.'.join(map(str, exc.errors()[0]['loc']))}: {exc.errors()[0]['msg']}") from None


class TrendPoint(_Plain):
    window_id: str
    created_at: datetime
    end: Optional[datetime] = None
    verdict: Verdict
    n_samples: int
    psi: dict[str, float] = Field(description="PSI per tested signal of that window")


class Trend(_Plain):
    """PSI per signal over a model's checked windows, oldest first."""

    model: str
    points: list[TrendPoint]
    signals: list[str]
    unreadable: list[str] = Field(default_factory=list, description="drift.json keys that could not be parsed")
    files: dict[str, str] = Field(default_factory=dict, description="Role -> file name in the output folder")
