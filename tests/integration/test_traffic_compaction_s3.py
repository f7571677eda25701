"""Traffic compaction on the S3 backend (moto's server): the same records, statistics and prompts after it."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from llmops.infra.config import DataConfig, MonitorConfig
from llmops.infra.store import open_store
from llmops.infra.traffic.compaction import compact
from llmops.infra.traffic.log import MANIFEST, read_window, window_files, write_records
from llmops.models.data.sources import resolve_source
from llmops.monitoring.check import check_store_window
from llmops.monitoring.profile import build_profile
from llmops.monitoring.synthetic import TrafficShape, synthetic_records, toy_tokenize

T0 = datetime(2025, 3, 4, 14, tzinfo=timezone.utc)
CFG = MonitorConfig(evidently_report=False)


def _prompts(store) -> list[tuple]:
    units = resolve_source("traffic://", DataConfig(), store, model_name="lm", cache_dir=Path("unused"),
                           now=T0 + timedelta(days=1))
    return sorted(((c.source, c.line, c.text, c.reason) for unit in units for c in unit.read()), key=repr)


def test_compaction_on_s3_keeps_every_reader_exact(s3_bucket, tmp_path):
    store = open_store(f"s3://{s3_bucket}/llmops")
    for h in range(2):
        batch = synthetic_records(150, TrafficShape(words_mean=26), seed=h, start=T0 + timedelta(hours=h), spacing_s=20)
        write_records(store, "lm", batch[:90])
        write_records(store, "lm", batch[90:])
    store.put_text("traffic/lm/2025/03/04/14/zz-bad.jsonl", '{"truncated\n')
    profile = build_profile(synthetic_records(600, seed=1), toy_tokenize, CFG, model_name="lm", model_version=1)
    start, end = T0, T0 + timedelta(hours=2)
    window, prompts = read_window(store, "lm", start, end), _prompts(store)
    jsonl = check_store_window(store, "lm", start, end, profile, toy_tokenize, CFG, tmp_path / "j")

    assert len(compact(store, "lm", T0 + timedelta(hours=2), delete_jsonl=True)) == 2
    assert store.get_json(f"traffic/lm/2025/03/04/14/{MANIFEST}")["malformed_lines"] == 1
    assert [k.rsplit("/", 1)[1][:11] for k in window_files(store, "lm", start, end)] == ["_compacted-"] * 2
    after = read_window(store, "lm", start, end)
    assert after == window and after.malformed == window.malformed and len(after) == 300
    parquet = check_store_window(store, "lm", start, end, profile, toy_tokenize, CFG, tmp_path / "p")
    assert parquet.n_samples == jsonl.n_samples == 300 and parquet.notes == jsonl.notes
    assert {k: s.psi for k, s in parquet.signals.items()} == {k: s.psi for k, s in jsonl.signals.items()}
    assert _prompts(store) == prompts
    assert compact(store, "lm", T0 + timedelta(hours=2)) == []  # idempotent, and the lock was released
