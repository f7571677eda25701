"""The drift check of a window, in memory or streamed from the store: signals against the reference profile,
the policy's verdict, and the window's files (drift.json last)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from llmops.infra.config import MonitorConfig
from llmops.infra.store import ArtifactStore
from llmops.infra.traffic.log import read_jsonl_file
from llmops.monitoring import layout, policy, report, stats
from llmops.monitoring.accumulate import PromptSample, SignalSummary, WindowAccumulator, sampling_keys
from llmops.monitoring.batch import Tokenize
from llmops.monitoring.classifier import ClassifierOutcome, domain_classifier_test
from llmops.monitoring.partition import (
    MergedWindow,
    accumulate_partition,
    merge_partials,
    partitions_of,
    prompt_sample_size,
    window_partition_prefixes,
)
from llmops.monitoring.profile import build_profile
from llmops.monitoring.records import (
    CLASSIFIER_SIGNAL,
    CategoricalProfile,
    ClassifierResult,
    ContinuousProfile,
    DriftReport,
    ReferenceProfile,
    SignalResult,
    SignalStats,
)
from llmops.monitoring.semantic import SemanticAccumulator, SentenceEmbedder
from llmops.monitoring.signals import SIGNALS, rows_batch, skip_reason
from llmops.monitoring.stream import CHUNK_BYTES


def _interval_labels(edges: list[float]) -> list[str]:
    if not edges:
        return ["(-inf, inf)"]
    inner = [f"({a:.4g}, {b:.4g}]" for a, b in zip(edges[:-1], edges[1:])]
    return [f"<= {edges[0]:.4g}", *inner, f"> {edges[-1]:.4g}"]


def continuous_stats(name: str, prof: ContinuousProfile, summary: SignalSummary, pseudo: float) -> SignalStats:
    """PSI/KL/JS on the profile's bins and KS of its sample against the window's sample, for one continuous signal."""
    ref_counts = np.asarray(prof.counts)
    div = stats.divergences(ref_counts, summary.counts, pseudo)
    test = stats.ks_test(np.asarray(prof.sample), summary.sample)
    return SignalStats(
        name=name, kind="continuous", n_reference=prof.stats.n, n_current=summary.n, missing=summary.missing,
        psi=float(div["psi"]), kl=float(div["kl"]), js=float(div["js"]),
        psi_noise_floor=stats.psi_noise_floor(ref_counts.size, prof.stats.n, summary.n),
        test="ks", statistic=test.statistic, p_value=test.p_value, effect_size=test.effect_size,
        effect_size_name="ks_d", bins=_interval_labels(prof.edges), reference_counts=ref_counts.tolist(),
        current_counts=summary.counts.tolist(), reference_mean=prof.stats.mean, current_mean=summary.mean,
        test_sample=int(summary.sample.size),
    )


def categorical_stats(name: str, prof: CategoricalProfile, summary: SignalSummary, pseudo: float) -> SignalStats:
    """PSI/KL/JS and the chi-square test of homogeneity on the profile's categories.

    For token_frequency the noise floor and the chi-square use the profile's design effect: token
    occurrences come in prompts, so their shares vary more than independent draws would.
    """
    ref_counts = np.asarray(prof.counts)
    n_ref = int(ref_counts.sum())
    div = stats.divergences(ref_counts, summary.counts, pseudo)
    test = stats.chi2_test(ref_counts, summary.counts, prof.design_effect)
    return SignalStats(
        name=name, kind="categorical", n_reference=n_ref, n_current=summary.n,
        missing=summary.missing, psi=float(div["psi"]), kl=float(div["kl"]), js=float(div["js"]),
        psi_noise_floor=stats.psi_noise_floor(ref_counts.size, n_ref, summary.n) * prof.design_effect,
        test="chi2", statistic=test.statistic, p_value=test.p_value, effect_size=test.effect_size,
        effect_size_name="cramers_v", bins=list(prof.categories), reference_counts=ref_counts.tolist(),
        current_counts=summary.counts.tolist(), design_effect=prof.design_effect,
    )


def measure(profile: ReferenceProfile, summaries: Mapping[str, SignalSummary], cfg: MonitorConfig, *,
            n_records: int, has_tokenizer: bool) -> tuple[dict[str, SignalStats], dict[str, str]]:
    """Statistics for every profiled signal with enough values; the others with the reason they were skipped."""
    measured, skipped = {}, {n: f"not in the reference profile: {r}" for n, r in profile.skipped.items()}
    for name in profile.signals:
        summary = summaries[name]
        if summary.n == 0:
            skipped[name] = skip_reason(name, n_records, has_tokenizer)
        elif summary.n < cfg.min_samples:
            skipped[name] = f"only {summary.n} values in the window (min_samples={cfg.min_samples})"
        elif name in profile.continuous:
            measured[name] = continuous_stats(name, profile.continuous[name], summary, cfg.smoothing)
        else:
            measured[name] = categorical_stats(name, profile.categorical[name], summary, cfg.smoothing)
    return measured, skipped


def judge(measured: Mapping[str, SignalStats], cfg: MonitorConfig,
          adjusted: Optional[Mapping[str, float]] = None) -> dict[str, SignalResult]:
    """Apply the policy: correct p-values over every signal tested (or take ``adjusted``, corrected over a larger
    family), then a status per signal."""
    adjusted = adjusted or policy.adjust_p_values({n: s.p_value for n, s in measured.items()}, cfg.correction)
    results = {}
    for name, s in measured.items():
        warn, alert = policy.thresholds_for(name, cfg)
        effect = policy.psi_effect(s.psi, s.psi_noise_floor, cfg.psi_debias)
        status = policy.signal_status(effect, adjusted[name], psi_warn=warn, psi_alert=alert, alpha=cfg.alpha)
        results[name] = SignalResult(**s.model_dump(), status=status, report_only=name in cfg.report_only_signals,
                                     psi_effect=effect, p_adjusted=adjusted[name],
                                     significant=adjusted[name] < cfg.alpha, psi_warn=warn, psi_alert=alert)
    return results


def validate_config(cfg: MonitorConfig) -> None:
    """Signal names in the config must exist: a typo would otherwise silently alert on latency."""
    unknown = sorted(set(cfg.report_only_signals) - {*SIGNALS, CLASSIFIER_SIGNAL})
    unknown += sorted(set(cfg.signal_thresholds) - set(SIGNALS))
    if unknown:
        raise ValueError(f"monitor config names unknown signal(s) {unknown}; known: {sorted(SIGNALS)} and "
                         f"{CLASSIFIER_SIGNAL} (report_only_signals)")


def run_classifier(profile: ReferenceProfile, prompts: Optional[Sequence[str]], cfg: MonitorConfig
                   ) -> tuple[Optional[ClassifierOutcome], Optional[str]]:
    """(the domain classifier's outcome, or why it did not run; None, None when it is off)."""
    if not cfg.domain_classifier:
        return None, None
    if not profile.texts:
        return None, ("the reference profile keeps no prompts (built before the domain classifier, or with "
                      "monitor.domain_classifier off): rebuild it")
    if prompts is None:
        return None, "no prompts were given for the window"
    try:
        return domain_classifier_test(profile.texts, prompts[:cfg.classifier_window_sample],
                                      reference_sample=cfg.classifier_reference_size,
                                      window_sample=cfg.classifier_window_sample), None
    except ValueError as exc:
        return None, str(exc)


def check_window(profile: ReferenceProfile, records: Sequence[dict] | Mapping[str, Sequence[dict]],
                 tokenize: Optional[Tokenize], cfg: MonitorConfig, out_dir: Path, *, window_id: Optional[str] = None,
                 start: Optional[datetime] = None, end: Optional[datetime] = None,
                 notes: Sequence[str] = ()) -> DriftReport:
    """Check one in-memory traffic window against a reference profile and write its files to ``out_dir``.

    The records go through the same accumulator as a streamed window (:func:`check_store_window`).
    Sampling keys are drawn per partition: records given by partition prefix (as
    :func:`~llmops.monitoring.partition.records_by_partition` reads a stored window) give the streamed
    check's report exactly; a plain sequence is one partition of its own.

    Args:
        profile: The production model's reference profile.
        records: The window's traffic records (contract format), or a mapping of partition prefix to its records.
        tokenize: The served tokenizer, batch form, for records without ``prompt_token_ids``.
        cfg: Thresholds and policy.
        out_dir: Local folder for the files (created).
        window_id: Name of the window (default: derived from start/end or the current time).
        start: Window start, recorded in the report.
        end: Window end, recorded in the report.
        notes: Extra lines for the report (e.g. malformed traffic lines).

    Raises:
        RecordError: A malformed record (the message names its id and field).
    """
    validate_config(cfg)
    accumulator = WindowAccumulator(profile, cfg.ks_window_sample)
    sample = PromptSample(cfg.classifier_window_sample)
    for partition, part_records in partitions_of(records):
        keys = sampling_keys(partition=partition)
        accumulator.add(rows_batch(part_records, tokenize, keys=keys.random(len(part_records))))
        if cfg.domain_classifier:  # the sample a streamed window of these records would read: keys of its own
            prompts = [r["prompt"] for r in part_records if isinstance(r, dict) and isinstance(r.get("prompt"), str)]
            sample.add(prompts, sampling_keys(partition=partition).random(len(prompts)))
    return finish_window(profile, accumulator, cfg, out_dir, has_tokenizer=tokenize is not None, window_id=window_id,
                         start=start, end=end, notes=notes, prompts=sample.prompts() if cfg.domain_classifier else None)


def finish_window(profile: ReferenceProfile, accumulator: WindowAccumulator, cfg: MonitorConfig, out_dir: Path, *,
                  has_tokenizer: bool, window_id: Optional[str] = None, start: Optional[datetime] = None,
                  end: Optional[datetime] = None, notes: Sequence[str] = (),
                  prompts: Optional[Sequence[str]] = None) -> DriftReport:
    """Statistics, verdict and files of an accumulated window; drift.json is written last.

    ``prompts`` (the window's, or a uniform sample of them) feed the domain classifier.

    Files: report.html/report.json (Evidently, when ``cfg.evidently_report`` and a signal was
    tested), hist_<signal>.png for moved signals, summary.md, and drift.json: a reader trusts a
    window folder only once drift.json is there.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "drift.json").unlink(missing_ok=True)  # a rerun's folder is untrusted until its drift.json lands
    created, n = datetime.now(timezone.utc), accumulator.n_records
    summaries = accumulator.summaries()
    if n < cfg.min_samples:
        measured = {}
        skipped = {name: f"window has {n} records (min_samples={cfg.min_samples})" for name in profile.signals}
    else:
        measured, skipped = measure(profile, summaries, cfg, n_records=n, has_tokenizer=has_tokenizer)
    outcome, why_not = run_classifier(profile, prompts, cfg) if n >= cfg.min_samples else (None, None)
    if why_not:
        skipped[CLASSIFIER_SIGNAL] = why_not
    family = {name: s.p_value for name, s in measured.items()}
    if outcome is not None:
        family[CLASSIFIER_SIGNAL] = outcome.p_value
    adjusted = policy.adjust_p_values(family, cfg.correction)
    results = judge(measured, cfg, adjusted)
    classifier = policy.judge_classifier(outcome, adjusted[CLASSIFIER_SIGNAL], cfg) if outcome else None
    decision = policy.window_verdict(results, n, cfg, classifier)
    if profile.schema_version < 2:
        notes = [*notes, "reference profile schema 1: its bins were fitted and counted on the same records, "
                         "which biases PSI upward; rebuild it (build_profile) for this model version"]
    files, problems = _write_companions(profile, summaries, results, classifier, cfg, out_dir)
    drift = DriftReport(
        window_id=window_id or _default_window_id(start, end, created), model_name=profile.model_name,
        model_version=profile.model_version, start=start, end=end, created_at=created,
        verdict=decision.verdict, severity=decision.severity, n_samples=n, min_samples=cfg.min_samples,
        alerting=decision.alerting, warning=decision.warning, signals=results, skipped=skipped, classifier=classifier,
        correction=cfg.correction, alpha=cfg.alpha, n_tests=len(family), notes=[*notes, *problems],
        out_dir=str(out_dir.resolve()), files=files,
    )
    (out_dir / "summary.md").write_text(report.render_summary(drift), encoding="utf-8")
    _write_atomic(out_dir / "drift.json", drift.model_dump_json(indent=2))
    return drift


def _write_companions(profile: ReferenceProfile, summaries: Mapping[str, SignalSummary],
                      results: dict[str, SignalResult], classifier: Optional[ClassifierResult], cfg: MonitorConfig,
                      out_dir: Path) -> tuple[dict[str, str], list[str]]:
    """Evidently's report and the histograms: (role -> file name incl. the two written last, problems)."""
    files, problems = {}, []
    if cfg.evidently_report and results:
        try:
            files.update(report.write_evidently_report(profile, summaries, list(results), out_dir,
                                                       banner=report.evidently_banner(results, classifier)))
        except Exception as exc:  # a third-party companion report must not cost us the verdict
            problems.append(f"Evidently report not written: {type(exc).__name__}: {exc}")
    files.update(report.write_histograms(results, out_dir))
    return {**files, "summary": "summary.md", "drift": "drift.json"}, problems


def _default_window_id(start: Optional[datetime], end: Optional[datetime], created: datetime) -> str:
    if start and end:
        return layout.window_id(start, end)
    return f"adhoc-{created:%Y%m%dT%H%M%SZ}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def compare_records(reference: Sequence[dict], current: Sequence[dict], tokenize: Optional[Tokenize],
                    cfg: MonitorConfig, out_dir: Path, *, model_name: str = "adhoc",
                    model_version: int = 0) -> DriftReport:
    """Build a profile from one set of records and check another against it (``llmops monitor``)."""
    profile = build_profile(reference, tokenize, cfg, model_name=model_name, model_version=model_version)
    return check_window(profile, current, tokenize, cfg, out_dir)


def load_reference(path: Path, tokenize: Optional[Tokenize], cfg: MonitorConfig) -> ReferenceProfile:
    """A reference from a file: a saved profile (.json) or traffic-format records (.jsonl) to profile."""
    path = Path(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"no reference profile at {path}")
        return ReferenceProfile.from_json(path.read_bytes())
    records = read_jsonl_file(path)
    if records.malformed:
        raise ValueError(f"reference {path}: {len(records.malformed)} malformed line(s), first: {records.malformed[0]}")
    return build_profile(records, tokenize, cfg, model_name=path.stem, model_version=0)


def check_files(reference: Path, current: Path, tokenize: Optional[Tokenize], cfg: MonitorConfig,
                out_dir: Path) -> DriftReport:
    """``llmops monitor --reference FILE --current FILE``: reference profile (.json) or records (.jsonl) vs records."""
    profile = load_reference(reference, tokenize, cfg)
    records = read_jsonl_file(current)
    notes = ([f"skipped {len(records.malformed)} malformed line(s) of {current}; first: {records.malformed[0]}"]
             if records.malformed else [])
    return check_window(profile, records, tokenize, cfg, out_dir, window_id=f"file-{Path(current).stem}", notes=notes)


def load_report(text: str | bytes) -> DriftReport:
    """Parse a drift.json (e.g. read back from the store)."""
    return DriftReport.model_validate(json.loads(text))


def check_store_window(store: ArtifactStore, model: str, start: datetime, end: datetime, profile: ReferenceProfile,
                       tokenize: Optional[Tokenize], cfg: MonitorConfig, out_dir: Path, *,
                       embedder: Optional[SentenceEmbedder] = None, version: Optional[int] = None,
                       window_id: Optional[str] = None, notes: Sequence[str] = (),
                       chunk_bytes: int = CHUNK_BYTES) -> DriftReport:
    """Check a stored traffic window against a reference profile, streaming; write its files to ``out_dir``.

    The window is accumulated partition by partition (:func:`~llmops.monitoring.partition.accumulate_partition`)
    and the partials merged (:func:`~llmops.monitoring.partition.merge_partials`), in this process: the
    monitor flow maps the same function over a cluster's workers and gets the same report.

    Memory is bounded by ``chunk_bytes`` (or one Parquet row group of a compacted hour) and the
    accumulator (bins, categories, one KS reservoir of ``cfg.ks_window_sample`` values per signal),
    not by the window. Records of other versions are left out and counted, malformed lines skipped
    and counted; both are noted in the report. With ``embedder`` (and a profile that has
    ``semantic_distance``) a uniform sample of the window's prompts is embedded.

    Args:
        store: The artifact store holding ``traffic/<model>/...``.
        model: Model name of the traffic.
        start: Window start (aware).
        end: Window end (aware, exclusive).
        profile: The reference profile of the checked version.
        tokenize: The served tokenizer, batch form, for records without ``prompt_token_ids``.
        cfg: Thresholds and policy.
        out_dir: Local folder for the files (created).
        embedder: The sentence encoder of ``profile.semantic`` (None: no semantic signal).
        version: Only records served by this version (default: the profile's ``model_version``).
        window_id: Name of the window (default: from start and end).
        notes: Extra lines for the report.
        chunk_bytes: Bytes parsed at once.
    """
    validate_config(cfg)
    version = profile.model_version if version is None else version
    size = prompt_sample_size(profile, cfg, embedder is not None)
    partials = (accumulate_partition(store, prefix, start, end, profile, tokenize, version=version,
                                     sample_size=cfg.ks_window_sample, prompt_sample=size, chunk_bytes=chunk_bytes)
                for prefix in window_partition_prefixes(model, start, end))
    merged = merge_partials(window_accumulator(profile, cfg, embedder), partials, size)
    return finish_merged(profile, merged, cfg, out_dir, has_tokenizer=tokenize is not None,
                         window_id=window_id or layout.window_id(start, end), start=start, end=end, notes=notes)


def window_accumulator(profile: ReferenceProfile, cfg: MonitorConfig,
                       embedder: Optional[SentenceEmbedder] = None) -> WindowAccumulator:
    """An empty accumulator for a window of ``profile`` (with the semantic signal when given ``embedder``)."""
    if embedder is None:
        return WindowAccumulator(profile, cfg.ks_window_sample)
    return SemanticAccumulator(profile, cfg.ks_window_sample, embedder)


def finish_merged(profile: ReferenceProfile, merged: MergedWindow, cfg: MonitorConfig, out_dir: Path, *,
                  has_tokenizer: bool, window_id: str, start: Optional[datetime] = None,
                  end: Optional[datetime] = None, notes: Sequence[str] = ()) -> DriftReport:
    """Statistics, verdict and files of a window whose partitions' partials were merged: the scan's notes, the
    prompt sample embedded (a :class:`SemanticAccumulator`) and given to the domain classifier, then
    :func:`finish_window`."""
    notes, accumulator = [*notes, *merged.scan.notes()], merged.accumulator
    prompts = merged.prompts.prompts() if merged.prompts is not None else None
    total = merged.prompts.seen if merged.prompts is not None else 0
    semantic = isinstance(accumulator, SemanticAccumulator)
    if semantic and total > cfg.semantic_window_sample:
        notes.append(f"semantic_distance: {cfg.semantic_window_sample} of {total} prompts embedded (uniform "
                     f"sample, monitor.semantic_window_sample)")
    if cfg.domain_classifier and profile.texts and total > cfg.classifier_window_sample:
        notes.append(f"{CLASSIFIER_SIGNAL}: {cfg.classifier_window_sample} of {total} prompts read (uniform "
                     f"sample, monitor.classifier_window_sample)")
    if semantic:
        accumulator.add_prompts((prompts or [])[:cfg.semantic_window_sample])
    return finish_window(profile, accumulator, cfg, out_dir, has_tokenizer=has_tokenizer, window_id=window_id,
                         start=start, end=end, notes=notes, prompts=prompts)
