"""Benchmark: llmops drift statistics (fixed reference bins, numpy/scipy) vs Evidently's DataDriftPreset, side by side.

Same synthetic data for both (8 numeric columns: 3 undrifted, 5 drifted in different ways), at each
size in ``--sizes`` rows for reference and for current. Every (tool, statistic, size) runs in its own
subprocess so its peak memory (max RSS, via ``resource``) is its own; wall time covers the
statistic only (data generation and imports are excluded, Evidently's Dataset wrapping included).

    python bench/bench_drift.py                    # 100k and 1M rows
    python bench/bench_drift.py --sizes 20000      # a quick run

Writes bench/results/drift_speed.json and drift_speed.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import RESULTS, ROOT, max_rss_mb, run_meta, write_results

THRESHOLDS = {"psi": 0.1, "kl": 0.1}  # drift when value >= threshold; ks: drift when p < 0.05 (Evidently's defaults)
KS_ALPHA = 0.05
EVIDENTLY_METHOD = {"psi": "psi", "kl": "kl_div", "ks": "ks"}
COLUMNS = {  # name: what happens to it in the current data
    "normal": "no drift",
    "lognormal": "no drift",
    "uniform": "no drift",
    "shift_0.5sd": "mean +0.5 sd",
    "scale_1.5": "sd x1.5",
    "shift_0.02sd": "mean +0.02 sd (tiny: significant at large n, negligible PSI)",
    "poisson_5to6": "integer counts, lambda 5 -> 6",
    "outliers_10pct": "10% of values moved far out",
}


def make_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference, current), each of shape (n, 8), float64, deterministic.

    Filled column by column into preallocated column-major arrays, so generating the data leaves
    no high-water mark of temporaries above the data itself (the memory figures stay readable).
    """
    rng = np.random.default_rng(0)

    def outliers() -> np.ndarray:
        values = rng.normal(size=n)
        values[rng.random(n) < 0.1] += 6.0
        return values

    reference = [lambda: rng.normal(size=n), lambda: rng.lognormal(size=n), lambda: rng.uniform(size=n),
                 lambda: rng.normal(size=n), lambda: rng.normal(size=n), lambda: rng.normal(size=n),
                 lambda: rng.poisson(5, size=n), lambda: rng.normal(size=n)]
    current = [lambda: rng.normal(size=n), lambda: rng.lognormal(size=n), lambda: rng.uniform(size=n),
               lambda: rng.normal(0.5, size=n), lambda: rng.normal(0, 1.5, size=n), lambda: rng.normal(0.02, size=n),
               lambda: rng.poisson(6, size=n), outliers]
    ref, cur = np.empty((n, len(COLUMNS)), order="F"), np.empty((n, len(COLUMNS)), order="F")
    for j, (make_ref, make_cur) in enumerate(zip(reference, current)):
        ref[:, j], cur[:, j] = make_ref(), make_cur()
    return ref, cur


def run_ours(ref: np.ndarray, cur: np.ndarray, method: str) -> tuple[dict, float, float]:
    """Our statistic per column: profile (once per model, timed apart) then the window check."""
    from llmops.infra.config import MonitorConfig
    from llmops.monitoring import stats
    from llmops.monitoring.profile import continuous_profile, quantile_edges

    cfg = MonitorConfig()
    t0 = time.perf_counter()
    if method == "ks":  # the profile keeps a 5000-value sample of the reference
        profiles = [np.asarray(continuous_profile(ref[:, j], cfg.n_bins, cfg.ks_sample_size, cfg.tail_quantile).sample)
                    for j in range(ref.shape[1])]
    elif method == "ks_full":
        profiles = [ref[:, j] for j in range(ref.shape[1])]
    else:
        edges = [quantile_edges(ref[:, j], cfg.n_bins, cfg.tail_quantile) for j in range(ref.shape[1])]
        profiles = [(e, stats.bin_counts(ref[:, j], e)) for j, e in enumerate(edges)]
    t1 = time.perf_counter()
    values = []
    for j, prof in enumerate(profiles):
        if method.startswith("ks"):
            values.append(stats.ks_test(prof, cur[:, j]).p_value)
        else:
            div = stats.divergences(prof[1], stats.bin_counts(cur[:, j], prof[0]), cfg.smoothing)
            values.append(float(div[method]))
    t2 = time.perf_counter()
    return dict(zip(COLUMNS, values)), t1 - t0, t2 - t1


def run_evidently(ref: np.ndarray, cur: np.ndarray, method: str) -> tuple[dict, float, float]:
    """Evidently 0.7's DataDriftPreset with one method for every column."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    names = list(COLUMNS)
    ref_df, cur_df = pd.DataFrame(ref, columns=names), pd.DataFrame(cur, columns=names)
    definition = DataDefinition(numerical_columns=names)
    t0 = time.perf_counter()
    snapshot = Report(metrics=[DataDriftPreset(method=EVIDENTLY_METHOD[method])]).run(
        current_data=Dataset.from_pandas(cur_df, data_definition=definition),
        reference_data=Dataset.from_pandas(ref_df, data_definition=definition))
    result = snapshot.dict()
    elapsed = time.perf_counter() - t0
    values = {m["config"]["column"]: float(m["value"]) for m in result["metrics"] if m["config"].get("column")}
    return values, 0.0, elapsed


def worker(tool: str, method: str, n: int) -> dict:
    """Run one (tool, method, size) in this process and return its measurements."""
    import warnings

    warnings.simplefilter("ignore")
    # Imports happen before the baseline: their time and memory are excluded, like the data's.
    if tool == "evidently":
        import evidently  # noqa: F401
    else:
        import llmops.monitoring.profile  # noqa: F401
    ref, cur = make_data(n)
    baseline = max_rss_mb()
    values, profile_s, check_s = (run_ours if tool == "ours" else run_evidently)(ref, cur, method)
    peak = max_rss_mb()
    drift = {c: (v < KS_ALPHA) if method.startswith("ks") else (v >= THRESHOLDS[method]) for c, v in values.items()}
    return {"tool": tool, "method": method, "n": n, "profile_s": profile_s, "check_s": check_s,
            "wall_s": profile_s + check_s, "peak_rss_mb": peak, "rss_before_mb": baseline,
            "rss_added_mb": peak - baseline, "values": values, "drift": drift}


def run_one(tool: str, method: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", tool, method, str(n)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{tool}/{method}/{n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(rows: list[dict]) -> list[dict]:
    """Per size and statistic: ours vs Evidently time, ratio, memory, per-column verdict agreement."""
    table = []
    for n in sorted({r["n"] for r in rows}):
        for method in ("psi", "kl", "ks"):
            ev = next(r for r in rows if r["n"] == n and r["tool"] == "evidently" and r["method"] == method)
            for ours_method in ([method, "ks_full"] if method == "ks" else [method]):
                us = next(r for r in rows if r["n"] == n and r["tool"] == "ours" and r["method"] == ours_method)
                agree = {c: us["drift"][c] == ev["drift"][c] for c in COLUMNS}
                table.append({
                    "n": n, "statistic": ours_method, "ours_s": us["wall_s"], "ours_profile_s": us["profile_s"],
                    "ours_check_s": us["check_s"], "evidently_s": ev["wall_s"],
                    "ratio_total": ev["wall_s"] / us["wall_s"], "ratio_check": ev["wall_s"] / us["check_s"],
                    "ours_peak_rss_mb": us["peak_rss_mb"], "ours_rss_added_mb": us["rss_added_mb"],
                    "evidently_peak_rss_mb": ev["peak_rss_mb"], "evidently_rss_added_mb": ev["rss_added_mb"],
                    "verdicts_agree": sum(agree.values()), "columns": len(COLUMNS),
                    "disagree": [c for c, ok in agree.items() if not ok],
                })
    return table


def markdown(table: list[dict], rows: list[dict]) -> str:
    lines = [
        "# Drift statistics: llmops (fixed reference bins) vs Evidently 0.7.23 DataDriftPreset",
        "",
        f"{len(COLUMNS)} numeric columns, same rows in reference and current. Wall time of the statistic only; "
        "ours = profile (once per model version) + check (per window). Memory: max RSS of the worker process "
        "(imports and data included) and what the statistic added on top.",
        "",
        "| rows | statistic | ours total s (profile + check) | Evidently s | ratio Ev/ours total | ratio Ev/ours check "
        "| ours peak / added MB | Evidently peak / added MB | verdicts agree | disagree on |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        lines.append(
            f"| {t['n']:,} | {t['statistic']} "
            f"| {t['ours_s']:.2f} ({t['ours_profile_s']:.2f} + {t['ours_check_s']:.2f}) "
            f"| {t['evidently_s']:.2f} | {t['ratio_total']:.1f}x | {t['ratio_check']:.1f}x "
            f"| {t['ours_peak_rss_mb']:.0f} / {t['ours_rss_added_mb']:.0f} "
            f"| {t['evidently_peak_rss_mb']:.0f} / {t['evidently_rss_added_mb']:.0f} "
            f"| {t['verdicts_agree']}/{t['columns']} | {', '.join(t['disagree']) or '-'} |")
    lines += ["", "Columns: " + "; ".join(f"`{c}`: {w}" for c, w in COLUMNS.items()), "",
              "Per-column values (psi, kl: value; ks: p-value):", ""]
    for r in rows:
        lines.append(f"- {r['tool']} {r['method']} n={r['n']:,}: "
                     + ", ".join(f"{c}={v:.3g}{'*' if r['drift'][c] else ''}" for c, v in r["values"].items()))
    lines += ["", "`*` = drift at psi/kl >= 0.1, ks p < 0.05. `ks` (ours) tests the profile's 5000-value reference "
              "sample against the whole window; `ks_full` uses the whole reference, as Evidently does."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="rows per side")
    parser.add_argument("--out", type=Path, default=RESULTS / "drift_speed")
    parser.add_argument("--worker", nargs=3, metavar=("TOOL", "METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], int(args.worker[2]))))
        return
    rows = []
    for n in args.sizes:
        for tool, method in [("ours", "psi"), ("ours", "kl"), ("ours", "ks"), ("ours", "ks_full"),
                             ("evidently", "psi"), ("evidently", "kl"), ("evidently", "ks")]:
            rows.append(run_one(tool, method, n))
            print(f"{tool:9s} {method:7s} n={n:>9,}: {rows[-1]['wall_s']:7.2f} s, "
                  f"peak {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
    table = compare(rows)
    text = markdown(table, rows)
    print(text)
    write_results(args.out.name, {"meta": run_meta(sizes=args.sizes), "comparison": table, "runs": rows}, text,
                  args.out.parent)


if __name__ == "__main__":
    main()
