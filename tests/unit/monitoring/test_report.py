"""Our statistics against Evidently's on the same data and bins, verdict agreement, and Evidently's report files."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from llmops.infra.config import MonitorConfig
from llmops.monitoring import stats
from llmops.monitoring.check import check_window
from llmops.monitoring.profile import build_profile
from llmops.monitoring.synthetic import TrafficShape, synthetic_records, toy_tokenize


def _evidently(reference: np.ndarray, current: np.ndarray, method: str) -> float:
    """Evidently's own value of ``method`` for one numeric column."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=["x"])
    snapshot = Report(metrics=[DataDriftPreset(method=method)]).run(
        current_data=Dataset.from_pandas(pd.DataFrame({"x": current}), data_definition=definition),
        reference_data=Dataset.from_pandas(pd.DataFrame({"x": reference}), data_definition=definition))
    (value,) = [m["value"] for m in snapshot.dict()["metrics"] if m["metric_name"].startswith("ValueDrift")]
    return float(value)


def _evidently_bins(reference: np.ndarray, current: np.ndarray, fill: bool):
    """Evidently's binning: equal-width Sturges bins over both samples; zeros replaced by a tiny share."""
    edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
    shares = [np.histogram(x, edges)[0] / x.size for x in (reference, current)]
    if fill:
        for p in shares:
            smallest = p[p > 0].min()
            p[p == 0] = smallest / 1e6 if smallest <= 1e-4 else 1e-4
    return shares


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    return rng.normal(size=3000), rng.normal(0.3, 1.2, size=2000)


def test_psi_equals_evidentlys_on_evidentlys_bins(samples):
    ref_p, cur_p = _evidently_bins(*samples, fill=True)
    assert stats.psi(ref_p, cur_p) == pytest.approx(_evidently(*samples, "psi"), rel=1e-9)


def test_kl_equals_evidentlys_in_its_direction(samples):
    # Evidently's kl_div is scipy.stats.entropy(reference, current): KL(reference || current) after
    # renormalising its filled shares. Ours is KL(current || reference); swap the arguments to compare.
    ref_p, cur_p = _evidently_bins(*samples, fill=True)
    ours = stats.kl_divergence(ref_p / ref_p.sum(), cur_p / cur_p.sum())
    assert ours == pytest.approx(_evidently(*samples, "kl_div"), rel=1e-9)


def test_js_equals_evidentlys_up_to_the_log_base(samples):
    ref_p, cur_p = _evidently_bins(*samples, fill=False)  # Evidently's JS does not fill zeros either
    assert stats.js_distance(ref_p, cur_p) * math.sqrt(math.log(2)) == pytest.approx(
        _evidently(*samples, "jensenshannon"))


def test_ks_p_value_equals_evidentlys(samples):
    assert stats.ks_test(*samples).p_value == pytest.approx(_evidently(*samples, "ks"), rel=1e-9)


@pytest.mark.parametrize("shift, drifted", [(0.0, False), (0.05, False), (0.6, True), (1.5, True)])
def test_psi_verdicts_agree_with_evidently_on_its_own_bins(shift, drifted):
    # Different bins (our 10 reference quantiles vs its Sturges equal-width bins) give different
    # values, but the same verdict at the shared 0.1 threshold away from the boundary.
    rng = np.random.default_rng(1)
    reference, current = rng.normal(size=5000), rng.normal(shift, size=5000)
    edges = np.quantile(reference, np.arange(1, 10) / 10)
    ours = stats.divergences(stats.bin_counts(reference, edges), stats.bin_counts(current, edges), 0.5)["psi"]
    assert (ours >= 0.1) == (_evidently(reference, current, "psi") >= 0.1) == drifted


def test_check_window_writes_evidentlys_report(tmp_path):
    cfg = MonitorConfig()
    profile = build_profile(synthetic_records(600, seed=1), toy_tokenize, cfg, model_name="lm", model_version=1)
    report = check_window(profile, synthetic_records(400, TrafficShape(words_mean=40), seed=2), toy_tokenize, cfg,
                          tmp_path)
    assert {"report_html", "report_json", "summary", "drift"} <= set(report.files)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Dataset Drift" in html and "root_metric_" in html and len(html) > 100_000  # Evidently's page
    # which opens by saying its numbers are Evidently's own and which signals llmops flagged
    note = html[html.index('<div id="llmops-note"'):]
    assert html.index('<div id="llmops-note"') < html.index("root_metric_")
    assert "this page is Evidently's own view" in note
    assert "prompt_chars (alert, PSI" in note[:note.index("</div>")]
    metrics = json.loads((tmp_path / "report.json").read_text())["metrics"]
    methods = {m["config"]["column"]: m["config"]["method"] for m in metrics if m["config"].get("column")}
    assert methods["prompt_chars"] == "psi" and methods["stop_reason"] == "chisquare"
    assert set(methods) == set(report.signals)
    # Evidently's PSI for the drifted column (its own bins, 5000-row reference sample) agrees on the verdict
    value = {m["config"]["column"]: m["value"] for m in metrics if m["config"].get("column")}["prompt_chars"]
    assert value >= 0.2 and report.signals["prompt_chars"].status == "alert"
