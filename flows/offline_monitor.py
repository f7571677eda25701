"""``llmops monitor``: drift between two text files scored by a model, and replays of stored traffic windows."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from llmops.infra.config import PipelineConfig
from llmops.infra.store import ArtifactStore
from llmops.infra.traffic.log import parse_ts, partition_hour, traffic_prefix
from llmops.models.data import IngestError, read_file
from llmops.models.model import load_model
from llmops.models.release import Registry
from llmops.monitoring.check import compare_records
from llmops.monitoring.records import DriftReport
from llmops.monitoring.trend import trend
from llmops.tasks.core import monitoring as core
from llmops.tasks.core.context import cache_dir, store


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
    """(model, tokenizer, name, version): a local save_pretrained folder, or a registry version or alias."""
    if model_path is not None:
        try:
            model, tokenizer = load_model(model_path)
        except FileNotFoundError as exc:  # the message names the option the user gave
            raise FileNotFoundError(f"--model-path {exc}") from None
        return model, tokenizer, str(model_path), 0
    loaded = Registry(store(), config.model_name).load(model_ref, cache_dir=cache_dir())
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
    files = {"reference": Path(reference), "current": Path(current)}
    texts = {role: read_texts(path, config) for role, path in files.items()}  # a bad file fails before the model loads
    model, tokenizer, name, version = _load(config, model_ref, model_path)
    records = {}
    for role, path in files.items():
        print(f"scoring {len(texts[role])} {role} texts from {path} with {name} v{version}...")
        records[role] = core.served_records(model, tokenizer, texts[role], config, model_name=name, version=version)
    report = compare_records(records["reference"], records["current"], core.tokenize_with(tokenizer), config.monitor,
                             Path(out), model_name=name, model_version=version)
    print_report(report)
    return 1 if fail_on_alert and report.verdict == "alert" else 0


def backfill(config: PipelineConfig, out: Optional[Path] = None, *, start: Optional[str] = None,
             end: Optional[str] = None) -> int:
    """Replay stored traffic through the drift check, window by window (no events are emitted)."""
    st = store()
    stop = parse_ts(end) if end else datetime.now(timezone.utc)
    first = parse_ts(start) if start else _oldest_traffic(st, config.model_name)
    if first is None:
        print(f"no stored traffic for {config.model_name} in {st.uri}")
        return 0
    for window, report in core.backfill(st, config, first, stop, cache_dir()):
        if report is None:
            print(f"{window}: no traffic files, not checked")
        else:
            print(f"{report.window_id}: {report.verdict} ({report.n_samples} records) -> {report.out_dir}")
    result = trend(st, config.model_name, out_dir=out)
    if out is not None:
        print(f"trend: {Path(out) / result.files.get('table', '')}, {Path(out) / result.files.get('plot', '')}")
    return 0


def _oldest_traffic(store: ArtifactStore, model: str) -> Optional[datetime]:
    keys = store.list(traffic_prefix(model))
    return partition_hour(keys[0]) if keys else None
