"""Benchmark: the streaming window check end to end from JSONL and from compacted Parquet, vs Evidently.

For each size in ``--sizes``, synthetic traffic (``monitoring.synthetic``, with ``prompt_token_ids``,
drifted in prompt length and surprisal) is written into a temporary LocalStore's hour partitions,
and a reference profile is built from ``--reference`` undrifted records. A copy of the store is
compacted (``llmops.infra.traffic.compaction.compact``: every hour into one Parquet file). Each measurement
runs in its own subprocess, so its peak memory (max RSS) is its own:

* ``compact``: compacting the copy, once (in production: once per closed hour, before the check).
* ``ours-jsonl`` / ``ours-parquet``: ``check_store_window``'s two halves on the JSONL store and on
  the compacted one, ``stream_window`` (list the window's partitions, parse or read, accumulate) and
  ``finish_window`` (statistics, policy, drift.json), every signal, the Evidently companion report
  disabled; that companion report (bounded sample) is timed apart.
* ``evidently``: the same window loaded from the compacted Parquet into a DataFrame, then
  ``DataDriftPreset(method="psi")`` against the reference records as a DataFrame, on the 10
  per-record signals (token_frequency is one value per token, not a column).
* ``parsers`` (first size only): records/s of the stdlib json and orjson row parsers, Arrow's JSON
  parser, and reading the compacted Parquet's monitoring columns.
* ``check-one`` / ``check-dask``: the whole check as the monitor flow runs it (records, the prompt
  sample, statistics, the domain classifier, files; Evidently off), from the Parquet copy and from the
  JSONL store: in one process (``check_store_window``, ``monitor.cluster: local``), and as the map over
  the window's hour partitions through Prefect's ``DaskTaskRunner`` on a local cluster of two worker
  processes (the ``accumulate-partition`` task), merged and finished in the driver. The cluster's
  start and the workers' first imports are timed apart (a standing cluster pays them once;
  ``dask-local:N`` pays them per check); the reports must be identical.

    python bench/bench_drift_window.py                   # 100k and 1M records (~1 GB of JSONL at 1M)
    python bench/bench_drift_window.py --sizes 20000     # a quick run
    python bench/bench_drift_window.py --only cluster    # the one-process vs Dask check alone

Writes bench/results/drift_window.json and drift_window.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import RESULTS, ROOT, load_average, markdown_table, max_rss_mb, run_meta, write_results

T0 = datetime(2026, 11, 23, 0, tzinfo=timezone.utc)
HOURS = 6  # the window spans six hour partitions
PER_FILE = 25_000  # records per partition file, as a server flushing every few seconds would write far fewer
MODEL = "bench-lm"


def prepare(root: Path, n: int, reference: int) -> Path:
    """Write the reference profile and ``n`` window records into ``root``; reuse them if already there."""
    from llmops.infra.config import MonitorConfig
    from llmops.infra.store import LocalStore
    from llmops.infra.traffic.log import write_records
    from llmops.monitoring.profile import build_profile
    from llmops.monitoring.synthetic import TrafficShape, synthetic_records

    folder = root / f"n{n}"
    if (folder / "done").is_file():
        return folder
    store = LocalStore(folder / "store")
    profile = build_profile(synthetic_records(reference, seed=1, model=MODEL), None, MonitorConfig(),
                            model_name=MODEL, model_version=1)
    (folder / "profile.json").write_text(profile.to_json())
    (folder / "reference.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic_records(reference, seed=1)))
    shape, spacing = TrafficShape(words_mean=24, surprisal_mean=3.45), HOURS * 3600 / n
    for i, first in enumerate(range(0, n, PER_FILE)):
        size = min(PER_FILE, n - first)
        write_records(store, MODEL, synthetic_records(size, shape, seed=100 + i,
                                                      start=T0 + timedelta(seconds=first * spacing),
                                                      spacing_s=spacing, model=MODEL))
    (folder / "done").write_text("ok")
    return folder


def run_compact(folder: Path) -> dict:
    """Compact the copy of the JSONL store (every hour of the window is closed)."""
    from llmops.infra.store import LocalStore
    from llmops.infra.traffic.compaction import compact

    store = LocalStore(folder / "compacted")
    jsonl_mb = sum(p.stat().st_size for p in store.root.rglob("*.jsonl")) / 1e6
    baseline = max_rss_mb()
    t0, c0 = time.perf_counter(), _cpu_s()
    keys = compact(store, MODEL, T0 + timedelta(hours=HOURS))
    seconds, cpu, peak = time.perf_counter() - t0, _cpu_s() - c0, max_rss_mb()
    manifests = [store.get_json(f"{key.rsplit('/', 1)[0]}/_compacted.json") for key in keys]
    return {"compact_s": seconds, "compact_cpu_s": cpu, "hours": len(keys),
            "records": sum(m["records"] for m in manifests),
            "jsonl_mb": jsonl_mb, "parquet_mb": sum(store.local_path(k).stat().st_size for k in keys) / 1e6,
            "peak_rss_mb": peak, "rss_added_mb": peak - baseline}


def run_ours(folder: Path, source: str) -> dict:
    from llmops.infra.config import MonitorConfig
    from llmops.infra.store import LocalStore
    from llmops.monitoring import report
    from llmops.monitoring.accumulate import WindowAccumulator
    from llmops.monitoring.check import finish_window, judge, measure
    from llmops.monitoring.classifier import domain_classifier_test
    from llmops.monitoring.records import ReferenceProfile
    from llmops.monitoring.semantic import sample_prompts, window_prompts
    from llmops.monitoring.stream import stream_window

    profile, cfg = (ReferenceProfile.from_json((folder / "profile.json").read_text()),
                    MonitorConfig(evidently_report=False))
    store = LocalStore(folder / source)
    _warm_up(store, profile)
    baseline = max_rss_mb()
    with tempfile.TemporaryDirectory() as out:
        t0, c0 = time.perf_counter(), _cpu_s()
        accumulator = WindowAccumulator(profile, cfg.ks_window_sample)
        scan = stream_window(store, MODEL, T0, T0 + timedelta(hours=HOURS), accumulator, None, version=1)
        t1, c1 = time.perf_counter(), _cpu_s()
        measured, _ = measure(profile, accumulator.summaries(), cfg, n_records=accumulator.n_records,
                              has_tokenizer=False)
        judge(measured, cfg)  # the statistics and the policy alone; finish_window repeats them and writes the files
        t2 = time.perf_counter()
        drift = finish_window(profile, accumulator, cfg, Path(out), has_tokenizer=False)
        t3 = time.perf_counter()
        peak = max_rss_mb()
        report.write_evidently_report(profile, accumulator.summaries(), list(drift.signals), Path(out))
        t4 = time.perf_counter()
        # the domain classifier's own pass, as check_store_window makes it: the window's prompts read again, a
        # uniform sample kept, then the fit and the held-out tests
        prompts, seen = sample_prompts(window_prompts(store, MODEL, T0, T0 + timedelta(hours=HOURS), 1),
                                       cfg.classifier_window_sample)
        t5 = time.perf_counter()
        domain_classifier_test(profile.texts, prompts, reference_sample=cfg.classifier_reference_size,
                               window_sample=cfg.classifier_window_sample)
        t6 = time.perf_counter()
    return {"stream_s": t1 - t0, "stream_cpu_s": c1 - c0, "parse_s": scan.parse_s, "stats_s": t2 - t1,
            "files_s": t3 - t2, "total_s": (t1 - t0) + (t3 - t2),
            "evidently_companion_s": t4 - t3, "classifier_read_s": t5 - t4, "classifier_fit_s": t6 - t5,
            "classifier_prompts_seen": seen,
            "peak_rss_mb": peak, "rss_added_mb": peak - baseline, "records": scan.records,
            "fast_chunks": scan.fast_chunks, "row_chunks": scan.row_chunks, "row_groups": scan.row_groups,
            "verdict": drift.verdict,
            "signals": {k: s.model_dump(exclude={"current_mean"}) for k, s in drift.signals.items()},
            "psi": {k: s.psi for k, s in drift.signals.items()},
            "status": {k: s.status for k, s in drift.signals.items()}}


def _cpu_s() -> float:
    """CPU seconds of this process (all threads): what the work costs whatever else the machine runs."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _warm_up(store, profile) -> None:
    """Parse and accumulate a few records once: Arrow and numpy initialise lazily on first use, like imports."""
    import numpy as np

    from llmops.infra.traffic.log import window_files
    from llmops.infra.traffic.parquet import open_parquet
    from llmops.monitoring import columnar
    from llmops.monitoring.accumulate import WindowAccumulator

    key = window_files(store, MODEL, T0, T0 + timedelta(hours=HOURS))[0]
    if key.endswith(".parquet"):
        with open_parquet(store, key) as parquet:
            table = parquet.read_row_group(0, columns=columnar.PARQUET_COLUMNS).slice(0, 100)
        batch = columnar.table_batch(columnar.parquet_table(table))
    else:
        with open(store.local_path(key), "rb") as f:
            data = f.read(1 << 16)
        batch = columnar.table_batch(columnar.read_table(data[:data.rfind(b"\n") + 1]))
    batch.keys = np.zeros(batch.n)
    WindowAccumulator(profile, 100).add(batch)


def _frame(batch, profile):
    """A DataFrame of the per-record signals of a batch (rare_token_share with the profile's common set)."""
    import numpy as np
    import pandas as pd

    from llmops.monitoring.tokens import rare_token_share

    columns = dict(batch.numbers)
    columns["rare_token_share"] = rare_token_share(batch.token_ids, batch.token_lengths,
                                                   np.array(profile.common_tokens))
    labels = np.array([*batch.stop_labels, None], dtype=object)
    columns["stop_reason"] = labels[batch.stop_codes]
    return pd.DataFrame(columns)


def run_evidently(folder: Path) -> dict:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from llmops.infra.store import LocalStore
    from llmops.monitoring.records import ReferenceProfile
    from llmops.monitoring.signals import rows_batch

    profile, store = ReferenceProfile.from_json((folder / "profile.json").read_text()), LocalStore(folder / "compacted")
    reference = _frame(rows_batch([json.loads(line) for line in (folder / "reference.jsonl").open()], None), profile)
    _warm_up(store, profile)
    baseline = max_rss_mb()
    t0, c0 = time.perf_counter(), _cpu_s()
    current = pd.concat([_frame(batch, profile) for batch in _parquet_batches(store)], ignore_index=True)
    t1 = time.perf_counter()
    names = list(reference.columns)
    definition = DataDefinition(numerical_columns=[c for c in names if c != "stop_reason"],
                                categorical_columns=["stop_reason"])
    snapshot = Report(metrics=[DataDriftPreset(method="psi")]).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition))
    values = {m["config"]["column"]: float(m["value"]) for m in snapshot.dict()["metrics"] if m["config"].get("column")}
    t2 = time.perf_counter()
    peak = max_rss_mb()
    return {"load_s": t1 - t0, "report_s": t2 - t1, "total_s": t2 - t0, "cpu_s": _cpu_s() - c0,
            "peak_rss_mb": peak, "rss_added_mb": peak - baseline,
            "records": len(current), "psi": values, "drift": {c: v >= 0.1 for c, v in values.items()}}


def _parquet_batches(store):
    """The window's records as Batches, one per Parquet row group of the compacted store (all synthetic records fit)."""
    from llmops.infra.traffic.log import window_files
    from llmops.infra.traffic.parquet import open_parquet
    from llmops.monitoring import columnar

    for key in window_files(store, MODEL, T0, T0 + timedelta(hours=HOURS)):
        with open_parquet(store, key) as parquet:
            for i in range(parquet.num_row_groups):
                yield columnar.table_batch(columnar.parquet_table(
                    parquet.read_row_group(i, columns=columnar.PARQUET_COLUMNS)))


def run_parsers(folder: Path) -> dict:
    """Records/s of four ways to turn the window's records into columns (no statistics)."""
    import json as stdlib_json

    from llmops.infra.store import LocalStore
    from llmops.infra.traffic import log as traffic
    from llmops.monitoring import columnar
    from llmops.monitoring.signals import rows_batch

    store = LocalStore(folder / "store")
    keys = traffic.window_files(store, MODEL, T0, T0 + timedelta(hours=HOURS))
    timings = {}
    for name, loads in (("stdlib json rows", stdlib_json.loads), ("orjson rows", traffic.parse_json_line)):
        t0, n = time.perf_counter(), 0
        for key in keys:
            for _, data in traffic.iter_chunks(store, key):
                n += rows_batch([loads(line) for line in data.splitlines()], None).n
        timings[name] = {"s": time.perf_counter() - t0, "records": n}
    t0, n = time.perf_counter(), 0
    for key in keys:
        for _, data in traffic.iter_chunks(store, key):
            n += columnar.table_batch(columnar.read_table(data)).n
    timings["arrow columns"] = {"s": time.perf_counter() - t0, "records": n}
    t0 = time.perf_counter()
    n = sum(batch.n for batch in _parquet_batches(LocalStore(folder / "compacted")))
    timings["compacted Parquet columns"] = {"s": time.perf_counter() - t0, "records": n}
    return timings


def _report_facts(report) -> dict:
    """What must be identical between the one-process and the cluster check: everything but timings and paths."""
    return {"verdict": report.verdict, "n_samples": report.n_samples, "notes": report.notes, "skipped": report.skipped,
            "signals": {k: s.model_dump(mode="json") for k, s in report.signals.items()},
            "classifier": report.classifier.model_dump(mode="json", exclude={"seconds"}) if report.classifier else None}


def run_check(folder: Path) -> dict:
    """``check_store_window`` in this process, from the Parquet copy and from the JSONL store."""
    from llmops.infra.config import MonitorConfig
    from llmops.infra.store import LocalStore
    from llmops.monitoring.check import check_store_window
    from llmops.monitoring.records import ReferenceProfile

    profile, cfg = (ReferenceProfile.from_json((folder / "profile.json").read_text()),
                    MonitorConfig(evidently_report=False))
    out = {}
    for source, name in (("compacted", "parquet"), ("store", "jsonl")):
        store = LocalStore(folder / source)
        _warm_up(store, profile)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            report = check_store_window(store, MODEL, T0, T0 + timedelta(hours=HOURS), profile, None, cfg, Path(tmp))
            out[name] = {"s": time.perf_counter() - t0, "report": _report_facts(report)}
    return {**out, "peak_rss_mb": max_rss_mb()}


def run_check_dask(folder: Path, workers: int = 2) -> dict:
    """The same check as the monitor flow's ``check-drift-on-cluster``: ``accumulate-partition`` mapped over the
    window's partitions through prefect-dask's DaskTaskRunner on a LocalCluster of worker processes, the partials
    merged and finished here."""
    import importlib
    import os

    home = tempfile.mkdtemp(prefix="bench-prefect-")
    for key, value in {"PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                       "PREFECT_LOGGING_LEVEL": "WARNING", "DASK_LOGGING__DISTRIBUTED": "error",
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}.items():
        os.environ.setdefault(key, value)
    from distributed import Client, LocalCluster
    from prefect import flow, unmapped
    from prefect_dask import DaskTaskRunner

    from llmops.infra.config import MonitorConfig
    from llmops.infra.store import LocalStore
    from llmops.monitoring import layout
    from llmops.monitoring.accumulate import WindowAccumulator
    from llmops.monitoring.check import finish_merged
    from llmops.monitoring.partition import WindowPlan, merge_partials, prompt_sample_size, window_partition_prefixes
    from llmops.monitoring.records import ReferenceProfile
    from llmops.tasks.monitoring import accumulate_partition

    profile, cfg = (ReferenceProfile.from_json((folder / "profile.json").read_text()),
                    MonitorConfig(evidently_report=False))
    end = T0 + timedelta(hours=HOURS)
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    t1 = time.perf_counter()
    with Client(cluster) as client:  # what a worker's first task imports (torch and transformers among it)
        client.run(importlib.import_module, "llmops.tasks.monitoring")
    t2 = time.perf_counter()

    # by address: the runner is duplicated per flow run, and the flow travels to the workers in its context
    @flow(name="bench-drift-partitions", task_runner=DaskTaskRunner(address=cluster.scheduler_address),
          validate_parameters=False)
    def partitions(plan):
        return accumulate_partition.map(unmapped(plan), plan.partitions).result()

    def plan_for(store, prefixes) -> WindowPlan:
        store.put_bytes("bench/reference_profile.json", (folder / "profile.json").read_bytes())
        return WindowPlan(store_uri=store.uri, model=MODEL, version=1, start=T0, end=end,
                          window_id=layout.window_id(T0, end), partitions=prefixes,
                          profile_key="bench/reference_profile.json", sample_size=cfg.ks_window_sample,
                          prompt_sample=prompt_sample_size(profile, cfg, semantic=False))

    prefixes = window_partition_prefixes(MODEL, T0, end)
    t3 = time.perf_counter()
    # the API server starts, each worker runs its first tasks (Prefect's client, the profile read once per worker)
    partitions(plan_for(LocalStore(folder / "compacted"), prefixes))
    out = {"cluster_start_s": t1 - t0, "worker_imports_s": t2 - t1, "first_flow_s": time.perf_counter() - t3,
           "workers": workers}
    for source, name in (("compacted", "parquet"), ("store", "jsonl")):
        store = LocalStore(folder / source)
        plan = plan_for(store, prefixes)
        with tempfile.TemporaryDirectory() as tmp:
            t4 = time.perf_counter()
            results = partitions(plan)
            t5 = time.perf_counter()
            merged = merge_partials(WindowAccumulator(profile, cfg.ks_window_sample), results, plan.prompt_sample)
            t6 = time.perf_counter()
            report = finish_merged(profile, merged, cfg, Path(tmp), has_tokenizer=False, window_id=plan.window_id,
                                   start=T0, end=end)
            t7 = time.perf_counter()
        out[name] = {"s": t7 - t4, "map_s": t5 - t4, "merge_s": t6 - t5, "finish_s": t7 - t6,
                     "report": _report_facts(report)}
    cluster.close()
    return {**out, "peak_rss_mb": max_rss_mb()}


def worker(kind: str, folder: Path) -> dict:
    import warnings

    warnings.simplefilter("ignore")
    # imported before the baseline on both sides: import time and memory are not the check's
    import evidently  # noqa: F401
    import matplotlib.figure  # noqa: F401  (the check's histograms)

    import llmops.monitoring.check  # noqa: F401

    workers = {"ours-jsonl": lambda f: run_ours(f, "store"), "ours-parquet": lambda f: run_ours(f, "compacted"),
               "compact": run_compact, "evidently": run_evidently, "parsers": run_parsers,
               "check-one": run_check, "check-dask": run_check_dask}
    return workers[kind](folder)


def run_one(kind: str, folder: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", kind, str(folder)], cwd=ROOT / "bench",
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} on {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(n: int, jsonl: dict, ours: dict, compaction: dict, ev: dict) -> dict:
    """One size's row: ours from JSONL and from Parquet, compaction, Evidently (from the same Parquet)."""
    per_signal = {c: (ours["status"][c] != "ok", ev["drift"][c]) for c in ev["drift"]}
    return {
        "n": n, "jsonl_s": jsonl["total_s"], "jsonl_stream_s": jsonl["stream_s"], "jsonl_parse_s": jsonl["parse_s"],
        "jsonl_stream_cpu_s": jsonl["stream_cpu_s"], "jsonl_peak_rss_mb": jsonl["peak_rss_mb"],
        "jsonl_rss_added_mb": jsonl["rss_added_mb"],
        "ours_s": ours["total_s"], "ours_stream_s": ours["stream_s"], "ours_read_s": ours["parse_s"],
        "ours_stats_s": ours["stats_s"], "ours_files_s": ours["files_s"], "ours_stream_cpu_s": ours["stream_cpu_s"],
        "ours_peak_rss_mb": ours["peak_rss_mb"], "ours_rss_added_mb": ours["rss_added_mb"],
        "ours_evidently_companion_s": ours["evidently_companion_s"], "records_per_s": ours["records"] / ours["total_s"],
        "jsonl_classifier_read_s": jsonl["classifier_read_s"], "ours_classifier_read_s": ours["classifier_read_s"],
        "classifier_fit_s": ours["classifier_fit_s"],
        "speedup": jsonl["total_s"] / ours["total_s"], "identical": jsonl["signals"] == ours["signals"],
        "compact_s": compaction["compact_s"], "compact_cpu_s": compaction["compact_cpu_s"],
        "compact_records_per_s": compaction["records"] / compaction["compact_s"],
        "compact_peak_rss_mb": compaction["peak_rss_mb"], "compact_rss_added_mb": compaction["rss_added_mb"],
        "jsonl_mb": compaction["jsonl_mb"], "parquet_mb": compaction["parquet_mb"],
        "evidently_s": ev["total_s"], "evidently_load_s": ev["load_s"], "evidently_report_s": ev["report_s"],
        "ratio_total": ev["total_s"] / ours["total_s"], "evidently_cpu_s": ev["cpu_s"],
        "evidently_peak_rss_mb": ev["peak_rss_mb"], "evidently_rss_added_mb": ev["rss_added_mb"],
        "verdict": ours["verdict"], "agree": sum(a == b for a, b in per_signal.values()), "columns": len(per_signal),
        "disagree": [c for c, (a, b) in per_signal.items() if a != b],
    }


def compare_cluster(n: int, one: dict, dask: dict) -> dict:
    """One size's row of the whole check: one process against the map on the Dask workers, per source."""
    row = {"n": n, "workers": dask["workers"], "cluster_start_s": dask["cluster_start_s"],
           "worker_imports_s": dask["worker_imports_s"], "first_flow_s": dask["first_flow_s"],
           "one_peak_rss_mb": one["peak_rss_mb"], "dask_driver_peak_rss_mb": dask["peak_rss_mb"]}
    for source in ("parquet", "jsonl"):
        a, b = one[source], dask[source]
        row |= {f"{source}_one_s": a["s"], f"{source}_dask_s": b["s"], f"{source}_dask_map_s": b["map_s"],
                f"{source}_dask_merge_s": b["merge_s"], f"{source}_dask_finish_s": b["finish_s"],
                f"{source}_speedup": a["s"] / b["s"], f"{source}_identical": a["report"] == b["report"],
                f"{source}_verdict": a["report"]["verdict"]}
    return row


def cluster_markdown(rows: list[dict]) -> list[str]:
    table = [[f"{r['n']:,}", source, f"{r[source + '_one_s']:.2f}",
              f"**{r[source + '_dask_s']:.2f}** ({r[source + '_dask_map_s']:.2f} + {r[source + '_dask_merge_s']:.2f} + "
              f"{r[source + '_dask_finish_s']:.2f})", f"{r[source + '_speedup']:.2f}x",
              "yes" if r[source + "_identical"] else "NO"] for r in rows for source in ("parquet", "jsonl")]
    start = "; ".join(f"{r['cluster_start_s']:.1f} s + {r['worker_imports_s']:.1f} s + {r['first_flow_s']:.1f} s"
                      for r in rows)
    return [f"The whole check as the monitor flow runs it (records, a {2000:,}-prompt sample, statistics, the domain "
            "classifier, files; Evidently off): one process (`check_store_window`, `monitor.cluster: local`) against "
            f"the map over the window's {HOURS + 1} hour partitions through Prefect's `DaskTaskRunner` on a local "
            f"cluster of {rows[0]['workers']} worker processes (the `accumulate-partition` task, `dask-local:2`), "
            "the partials merged and finished in the driver. Identical: every signal's statistics, counts and means, "
            "the classifier, notes and verdict. The two workers, the driver and Prefect's API server share the "
            "machine's cores.", "",
            markdown_table(["records", "source", "one process s", "2 Dask workers s (map + merge + finish)",
                            "speed-up", "identical report"], table), "",
            f"Not in those times, paid once by a standing cluster and per check by `dask-local:2`: starting the "
            f"cluster + the workers' first imports (torch and transformers come with the task's module) + the first "
            f"flow run (Prefect's API server): {start} (per size).", ""]


def markdown(table: list[dict], runs: list[dict], parsers: dict, cluster: list[dict]) -> str:
    def mb(t: dict, side: str) -> str:
        return f"{t[side + '_peak_rss_mb']:.0f} / {t[side + '_rss_added_mb']:.0f}"

    check = [[f"{t['n']:,}",
              f"{t['jsonl_s']:.2f} ({t['jsonl_stream_s']:.2f} + {t['jsonl_s'] - t['jsonl_stream_s']:.2f})",
              f"{t['jsonl_parse_s']:.2f}", f"{t['jsonl_stream_cpu_s']:.1f}", mb(t, "jsonl"),
              f"**{t['ours_s']:.2f}** ({t['ours_stream_s']:.2f} + {t['ours_files_s']:.2f})", f"{t['ours_read_s']:.2f}",
              f"{t['ours_stream_cpu_s']:.1f}", f"{t['records_per_s'] / 1e3:.0f}k", mb(t, "ours"),
              f"{t['speedup']:.1f}x", "yes" if t["identical"] else "NO"] for t in table]
    compaction = [[f"{t['n']:,}", f"{t['compact_s']:.1f}", f"{t['compact_cpu_s']:.1f}",
                   f"{t['compact_records_per_s'] / 1e3:.0f}k", mb(t, "compact"),
                   f"{t['jsonl_mb']:.0f} -> {t['parquet_mb']:.0f}"] for t in table]
    evidently = [[f"{t['n']:,}", f"{t['ours_s']:.2f}", f"{t['ours_evidently_companion_s']:.1f}",
                  f"{t['evidently_s']:.1f} ({t['evidently_load_s']:.1f} + {t['evidently_report_s']:.1f})",
                  f"{t['ratio_total']:.1f}x", mb(t, "ours"), mb(t, "evidently"), f"{t['agree']}/{t['columns']}",
                  ", ".join(t["disagree"]) or "-"] for t in table]
    lines = ["# Streaming window check from JSONL and from compacted Parquet, vs Evidently DataDriftPreset", "",
             f"Synthetic traffic (~1 KB per record, 21 token ids) in {HOURS} hour partitions of {PER_FILE:,}-record "
             "JSONL files, and a copy compacted into one Parquet file per hour. Ours: `stream_window` (list, read: "
             "8 MB JSONL chunks through Arrow's JSON parser, or Parquet row groups of the monitoring columns; "
             "accumulate 11 signals) + `finish_window` (statistics, policy, drift.json, summary.md, PNG histograms "
             "of the moved signals), Evidently's companion report timed apart. Memory: max RSS of each worker "
             "process, and what the run added after imports. Target: 1M records within a few seconds.", "",
             markdown_table(["records", "JSONL: s (stream + statistics & files)", "of which JSON parse s",
                             "stream CPU s", "peak / added MB", "Parquet: s (stream + statistics & files)",
                             "of which read s", "stream CPU s", "records/s", "peak / added MB", "Parquet speed-up",
                             "identical statistics"],
                            check), "",
             "Compaction (once per closed hour, before the scheduled check; here the whole window at once):", "",
             markdown_table(["records", "s", "CPU s", "records/s", "peak / added MB", "JSONL MB -> Parquet MB"],
                            compaction), "",
             "Against Evidently (both reading the compacted Parquet; "
             "Evidently's verdict: PSI >= 0.1 on its own bins):", "",
             markdown_table(["records", "ours s", "+ Evidently companion s", "Evidently s (load + report)", "Ev/ours",
                             "ours peak / added MB", "Evidently peak / added MB", "per-signal verdicts agree",
                             "disagree on"],
                            evidently), ""]
    if parsers:
        lines += ["Turning the window's records into columns (no statistics):", "",
                  markdown_table(["parser", "s", "records/s"],
                                 [[k, f"{v['s']:.2f}", f"{v['records'] / v['s'] / 1e3:.0f}k"]
                                  for k, v in parsers.items()]), ""]
    lines += ["The domain classifier's pass (check_store_window reads the window's prompts a second time, keeps a "
              "uniform sample of 2,000, fits and tests; not in the times above):", "",
              markdown_table(["records", "read prompts from JSONL s", "from Parquet s", "fit + tests s"],
                             [[f"{t['n']:,}", f"{t['jsonl_classifier_read_s']:.2f}",
                               f"{t['ours_classifier_read_s']:.2f}", f"{t['classifier_fit_s']:.2f}"]
                              for t in table]), ""]
    lines += cluster_markdown(cluster)
    lines += ["Per-signal PSI (ours: status; Evidently: PSI on its own Sturges bins, drift at >= 0.1):", ""]
    for r in runs:
        lines.append(f"- {r['kind']} n={r['n']:,}: " + ", ".join(
            f"{c}={v:.3g}{'' if r['kind'] == 'evidently' else ' ' + r['status'][c]}" for c, v in r["psi"].items()))
    return "\n".join(lines) + "\n"


def fresh_copy(folder: Path) -> None:
    """The JSONL store copied to ``compacted/`` (compaction rewrites it in place; the JSONL side stays as it is)."""
    shutil.rmtree(folder / "compacted", ignore_errors=True)
    shutil.copytree(folder / "store", folder / "compacted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--reference", type=int, default=20_000, help="reference records profiled")
    parser.add_argument("--data", type=Path, help="folder for the generated traffic (reused); default: a temporary one")
    parser.add_argument("--out", type=Path, default=RESULTS / "drift_window")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]))))
        return
    root = args.data or Path(tempfile.mkdtemp(prefix="bench-drift-window-"))
    table, runs, parsers, cluster = [], [], {}, []
    for i, n in enumerate(args.sizes):
        t0 = time.perf_counter()
        folder = prepare(root, n, args.reference)
        fresh_copy(folder)
        print(f"n={n:,}: data ready in {time.perf_counter() - t0:.0f} s", flush=True)
        compaction = run_one("compact", folder)
        if i == 0:
            parsers = run_one("parsers", folder)
        jsonl, ours, ev = run_one("ours-jsonl", folder), run_one("ours-parquet", folder), run_one("evidently", folder)
        runs += [{"kind": "ours-jsonl", "n": n, **jsonl}, {"kind": "ours-parquet", "n": n, **ours},
                 {"kind": "evidently", "n": n, **ev}]
        table.append(compare(n, jsonl, ours, compaction, ev))
        print(f"n={n:,}: JSONL {jsonl['total_s']:.2f} s, Parquet {ours['total_s']:.2f} s (compaction "
              f"{compaction['compact_s']:.1f} s), Evidently {ev['total_s']:.1f} s", flush=True)
        cluster.append(compare_cluster(n, run_one("check-one", folder), run_one("check-dask", folder)))
        print(f"n={n:,}: whole check from Parquet, one process {cluster[-1]['parquet_one_s']:.2f} s, 2 Dask workers "
              f"{cluster[-1]['parquet_dask_s']:.2f} s (identical: {cluster[-1]['parquet_identical']}); from JSONL "
              f"{cluster[-1]['jsonl_one_s']:.2f} s and {cluster[-1]['jsonl_dask_s']:.2f} s (identical: "
              f"{cluster[-1]['jsonl_identical']})", flush=True)
    text = markdown(table, runs, parsers, cluster)
    print(text)
    for r in runs:
        r.pop("signals", None)  # compared above; the results keep PSI and status per signal
    write_results(args.out.name, {"meta": run_meta(reference=args.reference, hours=HOURS, per_file=PER_FILE,
                                                   load_average=load_average()),
                                  "comparison": table, "cluster": cluster, "parsers": parsers, "runs": runs},
                  text, args.out.parent)


if __name__ == "__main__":
    main()
