"""``llmops monitor``: drift between two text files scored by a model, and replays of stored traffic windows."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from transformers import AutoModelForCausalLM, AutoTokenizer

from llmops.infra.config import PipelineConfig
from llmops.infra.settings import get_settings
from llmops.infra.store import open_store
from llmops.infra.traffic.log import parse_ts, window_partitions
from llmops.models.data.formats import IngestError, read_file
from llmops.models.model.reference import reference_records
from llmops.models.release.registry import Registry
from llmops.monitoring.drift import compare_records
from llmops.monitoring.records import DriftReport


def read_texts(path: Path, config: PipelineConfig) -> list[str]:
    """Texts of a .jsonl ({"text": ...}), .txt/.md or .parquet file, at most ``serve.max_prompt_chars`` each."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    texts = [c.text.strip() for c in read_file(path, label=str(path), text_field=config.data.text_field,
                                                chunk_chars=min(config.data.chunk_chars, config.serve.max_prompt_chars))
             if c.text and c.text.strip()]
    texts = [t for t in texts if len(t) <= config.serve.max_prompt_chars]
    if not texts:  # IngestError (a ValueError) so the CLI reports it instead of a traceback
        raise IngestError(f"{path}: no usable text (field {config.data.text_field!r} for JSONL/Parquet)")
    return texts


def _load(config: PipelineConfig, model_ref: str, model_path: Optional[Path]):
    if model_path is not None:
        if not (Path(model_path) / "config.json").is_file():  # else transformers tries the Hub and fails offline
            raise FileNotFoundError(f"--model-path {model_path} is not a saved model folder (no config.json)")
        return (AutoModelForCausalLM.from_pretrained(model_path).eval(), AutoTokenizer.from_pretrained(model_path),
                str(model_path), 0)
    loaded = Registry(open_store(), config.model_name).load(model_ref, cache_dir=get_settings().cache_dir)
    return loaded.model, loaded.tokenizer, config.model_name, loaded.version


def print_report(report: DriftReport) -> None:
    print(f"verdict: {report.verdict} (severity {report.severity}); {report.n_samples} current records")
    for name, s in report.signals.items():
        print(f"  {name:<20} PSI {s.psi:7.3f}  KL {s.kl:7.3f}  {s.test} p={s.p_value:.2e}  {s.status}")
    for name, why in report.skipped.items():
        print(f"  {name:<20} skipped: {why}")
    print(f"files: {report.out_dir}/" + ", ".join(sorted(set(report.files.values()))))


def monitor_files(config: PipelineConfig, reference: Path, current: Path, out: Path, *, model_ref: str = "production",
                  model_path: Optional[Path] = None, fail_on_alert: bool = False) -> int:
    """Score both files with the model as if they were served, profile the reference, check the current."""
    from llmops.tasks.monitoring import serving_params, tokenize_with

    files = {"reference": Path(reference), "current": Path(current)}
    texts = {role: read_texts(path, config) for role, path in files.items()}  # a bad file fails before the model loads
    model, tokenizer, name, version = _load(config, model_ref, model_path)
    records = {}
    for role, path in files.items():
        print(f"scoring {len(texts[role])} {role} texts from {path} with {name} v{version}...")
        records[role] = reference_records(model, tokenizer, texts[role], params=serving_params(config),
                                          model_name=name, version=version)
    report = compare_records(records["reference"], records["current"], tokenize_with(tokenizer), config.monitor,
                             Path(out), model_name=name, model_version=version)
    print_report(report)
    return 1 if fail_on_alert and report.verdict == "alert" else 0


def backfill(config: PipelineConfig, out: Optional[Path] = None, *, start: Optional[str] = None,
             end: Optional[str] = None) -> int:
    """Replay stored traffic through the drift check, window by window (no events are emitted)."""
    from llmops.monitoring.trend import trend
    from llmops.tasks.monitoring import run_drift_check, store_window_id

    store = open_store()
    stop = parse_ts(end) if end else datetime.now(timezone.utc)
    first = parse_ts(start) if start else _oldest_traffic(store, config.model_name)
    if first is None:
        print(f"no stored traffic for {config.model_name} in {store.uri}")
        return 0
    step = timedelta(minutes=config.monitor.window_minutes)
    moment = first
    while moment < stop:
        end_of_window = min(moment + step, stop)
        if any(p.parquet or p.jsonl for p in window_partitions(store, config.model_name, moment, end_of_window)):
            report = run_drift_check(config, moment, end_of_window)
            print(f"{report.window_id}: {report.verdict} ({report.n_samples} records) -> {report.out_dir}")
        else:  # a gap of days in the log must not become thousands of empty drift.json files in the trend
            print(f"{store_window_id(moment, end_of_window)}: no traffic files, not checked")
        moment = end_of_window
    result = trend(store, config.model_name, out_dir=out)
    if out is not None:
        print(f"trend: {Path(out) / result.files.get('table', '')}, {Path(out) / result.files.get('plot', '')}")
    return 0


def _oldest_traffic(store, model: str) -> Optional[datetime]:
    keys = store.list(f"traffic/{model}")
    if not keys:
        return None
    year, month, day, hour = keys[0].split("/")[2:6]
    return datetime(int(year), int(month), int(day), int(hour), tzinfo=timezone.utc)
