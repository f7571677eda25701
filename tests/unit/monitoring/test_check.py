"""check_window on synthetic traffic: no drift -> ok, drift -> alert, the files written, the CLI helpers."""
from __future__ import annotations

import json

import pytest

from llmops.infra.config import MonitorConfig
from llmops.monitoring.check import check_files, check_window, compare_records, load_report
from llmops.monitoring.profile import build_profile
from llmops.monitoring.synthetic import TrafficShape, synthetic_records, toy_tokenize

CFG = MonitorConfig(evidently_report=False)  # Evidently's report is tested once, in test_monitoring_evidently


@pytest.fixture(scope="module")
def profile():
    return build_profile(synthetic_records(2000, seed=1), toy_tokenize, CFG, model_name="lm", model_version=4)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_traffic_like_the_reference_is_ok(profile, tmp_path, seed):
    report = check_window(profile, synthetic_records(800, seed=seed), toy_tokenize, CFG, tmp_path)
    assert report.verdict == "ok", {n: (r.psi, r.p_adjusted) for n, r in report.signals.items()}
    assert report.severity == "none" and report.n_tests == 12 and not report.skipped
    assert report.classifier.status == "ok"
    assert not any(f.endswith(".png") for f in report.files.values())


@pytest.mark.parametrize("shape, expected", [
    (TrafficShape(words_mean=32), {"prompt_chars", "prompt_tokens"}),
    (TrafficShape(surprisal_mean=3.7), {"prompt_surprisal"}),
    (TrafficShape(vocab_offset=150), {"token_frequency"}),
    (TrafficShape(length_stop_share=0.2), {"stop_reason", "completion_tokens"}),
])
def test_drifted_traffic_alerts_on_the_signals_that_moved(profile, tmp_path, shape, expected):
    report = check_window(profile, synthetic_records(800, shape, seed=5), toy_tokenize, CFG, tmp_path)
    assert report.verdict == "alert" and report.drifted
    assert expected <= set(report.alerting)
    assert report.severity in ("medium", "high")
    for name in set(report.alerting) - {"domain_classifier"}:  # the classifier has no PSI or histogram
        result = report.signals[name]
        assert result.psi >= CFG.psi_alert and result.significant
        assert (tmp_path / f"hist_{name}.png").stat().st_size > 1000


def test_latency_drift_is_reported_but_never_alerts(profile, tmp_path):
    report = check_window(profile, synthetic_records(800, TrafficShape(latency_scale=3), seed=6), toy_tokenize, CFG,
                          tmp_path)
    assert report.signals["latency_ms"].status == "alert" and report.signals["latency_ms"].report_only
    assert report.verdict == "ok" and "latency_ms" not in report.alerting


def test_small_window_gives_insufficient_data_and_no_alert(profile, tmp_path):
    report = check_window(profile, synthetic_records(50, TrafficShape(words_mean=80)), toy_tokenize, CFG, tmp_path)
    assert (report.verdict, report.severity, report.alerting, report.signals) == ("insufficient_data", "none", [], {})
    assert report.skipped["prompt_chars"] == "window has 50 records (min_samples=100)"
    assert (tmp_path / "drift.json").exists() and (tmp_path / "summary.md").exists()


def test_missing_feature_skips_the_signal_with_a_reason(profile, tmp_path):
    records = synthetic_records(300, seed=7)
    for r in records:
        del r["features"]["prompt_surprisal"]
    report = check_window(profile, records, toy_tokenize, CFG, tmp_path)
    assert report.skipped == {"prompt_surprisal": "no record carries features.prompt_surprisal"}
    assert report.n_tests == 11 and report.verdict == "ok"


def test_drift_json_holds_every_statistic_and_the_summary_links_the_files(profile, tmp_path):
    report = check_window(profile, synthetic_records(500, TrafficShape(words_mean=40), seed=8), toy_tokenize, CFG,
                          tmp_path, window_id="w1")
    saved = load_report((tmp_path / "drift.json").read_text())
    assert saved == report
    row = json.loads((tmp_path / "drift.json").read_text())["signals"]["prompt_chars"]
    for key in ("psi", "kl", "js", "statistic", "p_value", "p_adjusted", "effect_size", "reference_counts",
                "current_counts"):
        assert key in row
    summary = (tmp_path / "summary.md").read_text()
    assert "`w1`: **alert**" in summary and "[hist_prompt_chars.png](hist_prompt_chars.png)" in summary
    assert "| prompt_chars | alert |" in summary and "| latency_ms | ok (report only) |" in summary


def test_compare_records_and_check_files(tmp_path):
    reference, current = (synthetic_records(400, seed=9),
                          synthetic_records(400, TrafficShape(surprisal_mean=4.0), seed=10))
    report = compare_records(reference, current, toy_tokenize, CFG, tmp_path / "a")
    assert "prompt_surprisal" in report.alerting and report.model_name == "adhoc"
    ref_file, cur_file = tmp_path / "ref.jsonl", tmp_path / "cur.jsonl"
    ref_file.write_text("".join(json.dumps(r) + "\n" for r in reference))
    cur_file.write_text("".join(json.dumps(r) + "\n" for r in current) + "{not json\n")
    from_files = check_files(ref_file, cur_file, toy_tokenize, CFG, tmp_path / "b")
    assert from_files.alerting == report.alerting
    assert from_files.notes == [f"skipped 1 malformed line(s) of {cur_file}; first: {cur_file}:401: not JSON "
                                "(Expecting property name enclosed in double quotes)"]
    profile_file = tmp_path / "profile.json"
    profile_file.write_text(build_profile(reference, toy_tokenize, CFG, model_name="lm", model_version=1).to_json())
    assert check_files(profile_file, cur_file, toy_tokenize, CFG, tmp_path / "c").alerting == report.alerting


def test_check_files_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no reference profile at"):
        check_files(tmp_path / "missing.json", tmp_path / "cur.jsonl", toy_tokenize, CFG, tmp_path)
    (tmp_path / "ref.jsonl").write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"ref.jsonl: 1 malformed line\(s\), first: .*ref.jsonl:1: not a JSON object"):
        check_files(tmp_path / "ref.jsonl", tmp_path / "cur.jsonl", toy_tokenize, CFG, tmp_path)


def test_debiased_psi_keeps_small_undrifted_windows_from_warning(profile, tmp_path, monkeypatch):
    monkeypatch.setattr("llmops.monitoring.report.write_histograms",
                        lambda results, out_dir: {})  # verdicts only: no PNGs
    raw_cfg = CFG.model_copy(update={"psi_debias": False})
    debiased, raw = [], []
    for seed in range(100, 106):
        window = synthetic_records(100, seed=seed)  # min_samples: noise floor ~0.095 at 10 bins
        debiased.append(check_window(profile, window, toy_tokenize, CFG, tmp_path / f"d{seed}").verdict)
        raw.append(check_window(profile, window, toy_tokenize, raw_cfg, tmp_path / f"r{seed}").verdict)
    assert raw.count("warn") >= 5 and debiased.count("warn") <= 2  # ~17% of 100-record windows warn (docs)
    assert "alert" not in raw + debiased  # significance keeps noise from alerting either way


def test_a_failing_evidently_report_costs_a_note_not_the_verdict(profile, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("evidently changed its API again")

    monkeypatch.setattr("llmops.monitoring.report.write_evidently_report", broken)
    cfg = CFG.model_copy(update={"evidently_report": True})
    report = check_window(profile, synthetic_records(200, TrafficShape(words_mean=40), seed=11), toy_tokenize, cfg,
                          tmp_path)
    assert report.verdict == "alert" and "report_html" not in report.files
    assert report.notes == ["Evidently report not written: RuntimeError: evidently changed its API again"]
    assert "- Evidently report not written" in (tmp_path / "summary.md").read_text()


def test_monitoring_imports_no_orchestrator_no_torch_and_evidently_lazily():
    import subprocess
    import sys

    code = ("import sys, llmops.monitoring.check, llmops.monitoring.stream, llmops.infra.traffic.log, "
            "llmops.monitoring.trend, llmops.monitoring.synthetic; "
            "print(sorted(m for m in ('prefect', 'torch', 'transformers', 'evidently', 'matplotlib') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
