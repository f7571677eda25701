"""Report files of a window: Evidently's HTML/JSON (the only Evidently import), PNG histograms, markdown summary."""
from __future__ import annotations

import html
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Optional

import numpy as np

from llmops.monitoring.accumulate import SignalSummary
from llmops.monitoring.records import ClassifierResult, DriftReport, ReferenceProfile, SignalResult
from llmops.monitoring.signals import OTHER, SIGNALS

EVIDENTLY_SAMPLE = 5000  # rows per side handed to Evidently: a visual companion, drift.json is authoritative
EVIDENTLY_METHOD = {"continuous": "psi", "categorical": "chisquare"}


def _expand_counts(categories: list[str], counts: list[int], size: int) -> np.ndarray:
    """A sample of at most ``size`` category labels with the proportions of ``counts``."""
    counts_arr = np.asarray(counts, dtype=np.float64)
    scale = min(1.0, size / max(counts_arr.sum(), 1.0))
    return np.repeat(np.array(categories, dtype=object), np.round(counts_arr * scale).astype(np.int64))


def _subsample(values: np.ndarray, size: int) -> np.ndarray:
    if values.size <= size:
        return values
    return values[np.random.default_rng(0).choice(values.size, size=size, replace=False)]


def _current_column(profile: ReferenceProfile, name: str, summary: SignalSummary) -> np.ndarray:
    if name in profile.continuous:
        return _subsample(summary.sample, EVIDENTLY_SAMPLE)
    # Categorical: the window's counts on the reference categories, expanded into at most EVIDENTLY_SAMPLE labels.
    return _expand_counts(profile.categorical[name].categories, summary.counts.tolist(), EVIDENTLY_SAMPLE)


def evidently_frames(profile: ReferenceProfile, summaries: Mapping[str, SignalSummary], signals: list[str]):
    """(reference DataFrame, current DataFrame, Evidently DataDefinition, per-column method).

    Bounded on both sides: the reference's KS sample and expanded category counts, the window's KS
    reservoir (subsampled) and expanded counts, at most EVIDENTLY_SAMPLE rows each. Columns have
    different lengths: shorter ones are padded with NaN, which Evidently drops per column.
    """
    import pandas as pd
    from evidently import DataDefinition

    reference, current = {}, {}
    for name in signals:
        if name in profile.continuous:
            reference[name] = pd.Series(profile.continuous[name].sample, dtype="float64")
        else:
            cat = profile.categorical[name]
            reference[name] = pd.Series(_expand_counts(cat.categories, cat.counts, EVIDENTLY_SAMPLE), dtype=object)
        current[name] = pd.Series(_current_column(profile, name, summaries[name]),
                                  dtype="float64" if name in profile.continuous else object)
    definition = DataDefinition(numerical_columns=[n for n in signals if n in profile.continuous],
                                categorical_columns=[n for n in signals if n in profile.categorical])
    methods = {n: EVIDENTLY_METHOD[SIGNALS[n].kind] for n in signals}
    return pd.DataFrame(reference), pd.DataFrame(current), definition, methods


def evidently_banner(results: Mapping[str, SignalResult], classifier: Optional[ClassifierResult] = None) -> str:
    """The note report.html opens with: its numbers are Evidently's own, and the verdict is drift.json's."""
    moved = [f"{n} ({r.status}, PSI {r.psi:.3f})" for n, r in results.items()
             if r.status != "ok" and not r.report_only]
    if classifier is not None and classifier.status != "ok" and not classifier.report_only:
        moved.append(f"{classifier.name} ({classifier.status}, {classifier.new_share:.1%} of the window new)")
    return (
        '<div id="llmops-note" style="font-family:sans-serif;padding:10px 16px;margin:8px;border:2px solid #c77d00;'
        'background:#fff6e0">'
        "<b>llmops: this page is Evidently's own view of the window.</b> Its statistics are computed by Evidently on "
        f"its own bins (equal-width, refitted to every window) and judged at its own thresholds, on at most "
        f"{EVIDENTLY_SAMPLE} values per side, so its drift flags can differ from llmops'. The verdict is llmops' "
        "drift.json (see summary.md beside this file): PSI on the reference's fixed quantile bins, "
        "tests corrected over the window, and the domain classifier. Signals llmops flagged: "
        f"{html.escape(', '.join(moved) or 'none')}.</div>"
    )


def write_evidently_report(profile: ReferenceProfile, summaries: Mapping[str, SignalSummary], signals: list[str],
                           out_dir: Path, banner: str = "") -> dict[str, str]:
    """Write Evidently's DataDriftPreset report (report.html, report.json) of reference sample vs window, with
    ``banner`` (HTML) at the top of the page.

    Returns:
        ``{"report_html": "report.html", "report_json": "report.json"}`` (names inside ``out_dir``).
    """
    from evidently import Dataset, Report
    from evidently.presets import DataDriftPreset

    ref_df, cur_df, definition, methods = evidently_frames(profile, summaries, signals)
    report = Report(metrics=[DataDriftPreset(per_column_method=methods)])
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # Evidently's chisquare divides by a zero expected count when a category is new in the window.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(current_data=Dataset.from_pandas(cur_df, data_definition=definition),
                              reference_data=Dataset.from_pandas(ref_df, data_definition=definition))
    snapshot.save_html(str(out_dir / "report.html"))
    if banner:
        page = (out_dir / "report.html").read_text(encoding="utf-8")
        body = re.search(r"<body[^>]*>", page)
        at = body.end() if body else 0
        (out_dir / "report.html").write_text(page[:at] + banner + page[at:], encoding="utf-8")
    snapshot.save_json(str(out_dir / "report.json"))
    return {"report_html": "report.html", "report_json": "report.json"}


def write_histograms(signals: Mapping[str, SignalResult], out_dir: Path) -> dict[str, str]:
    """One PNG per moved signal (warn/alert): reference vs current proportions on the fixed bins."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg is used for PNG

    files = {}
    for name, result in signals.items():
        if result.status == "ok":
            continue
        ref = np.asarray(result.reference_counts, float) / max(sum(result.reference_counts), 1)
        cur = np.asarray(result.current_counts, float) / max(sum(result.current_counts), 1)
        x = np.arange(len(result.bins))
        fig = Figure(figsize=(max(6.0, 0.35 * len(x)), 3.6), layout="constrained")
        ax = fig.subplots()
        ax.bar(x - 0.2, ref, width=0.4, label=f"reference (n={result.n_reference})")
        ax.bar(x + 0.2, cur, width=0.4, label=f"current (n={result.n_current})")
        ax.set_xticks(x, [b.replace(OTHER, "other") for b in result.bins], rotation=60, fontsize=7, ha="right")
        ax.set_ylabel("share")
        ax.set_title(f"{name}: {result.status}, PSI {result.psi:.3f}, {result.test} p={result.p_value:.2g}")
        ax.legend(fontsize=8)
        fig.savefig(out_dir / f"hist_{name}.png", dpi=90)
        files[f"hist_{name}"] = f"hist_{name}.png"
    return files


def _row(result: SignalResult) -> str:
    status = result.status + (" (report only)" if result.report_only else "")
    return (f"| {result.name} | {status} | {result.psi:.4f} | {result.psi_noise_floor:.4f} | {result.kl:.4f} "
            f"| {result.js:.4f} | {result.test} "
            f"| {result.statistic:.4g} | {result.p_value:.3g} | {result.p_adjusted:.3g} "
            f"| {result.effect_size_name}={result.effect_size:.3f} | {result.n_current} |")


def render_summary(report: DriftReport, link_for: Optional[Callable[[str], str]] = None) -> str:
    """The markdown summary (for summary.md and the orchestrator's artifact).

    Args:
        report: The window's report.
        link_for: A file name of the window's folder -> the link to it (a presigned URL, a report server's);
            default: the relative name.
    """
    link_for = link_for or (lambda name: name)
    lines = [
        f"# Drift check `{report.window_id}`: **{report.verdict}** (severity {report.severity})",
        "",
        f"Model `{report.model_name}` v{report.model_version}; {report.n_samples} records "
        f"(min {report.min_samples}); {report.correction} over {report.n_tests} tests at alpha={report.alpha}.",
        f"Alerting: {', '.join(report.alerting) or 'none'}. Warning: {', '.join(report.warning) or 'none'}.",
        "",
        "| signal | status | PSI | PSI noise | KL(cur‖ref) | JS | test | statistic | p | p adj. | effect size | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row(r) for r in report.signals.values()),
    ]
    if report.classifier:
        lines += ["", *_classifier_lines(report.classifier)]
    if report.skipped:
        lines += ["", "Not tested: " + "; ".join(f"{k} ({v})" for k, v in report.skipped.items())]
    if report.notes:
        lines += ["", *(f"- {note}" for note in report.notes)]
    if report.files:
        lines += ["", "Files: " + ", ".join(f"[{name}]({link_for(name)})" for name in report.files.values())]
    return "\n".join(lines) + "\n"


def _classifier_lines(c: ClassifierResult) -> list[str]:
    """The domain classifier's verdict and what changed: the n-grams that most mark each side."""
    def grams(weights: list) -> str:
        return ", ".join(f"{w.ngram} {w.weight:+.2f}" for w in weights) or "none"

    return [
        f"**Domain classifier: {c.status}**{' (report only)' if c.report_only else ''}. Held-out AUC {c.auc:.3f} on "
        f"{c.n_reference} reference and {c.n_current} window prompts; p {c.p_value:.3g} (rank {c.p_rank:.3g}, top "
        f"decile {c.p_tail:.3g}), p adj. {c.p_adjusted:.3g}; an estimated {c.new_share:.1%} of the window's prompts "
        f"are unlike the reference (an alert needs {c.min_share:.0%}).",
        "",
        f"- What marks the window: {grams(c.current_ngrams)}",
        f"- What marks the reference: {grams(c.reference_ngrams)}",
    ]
