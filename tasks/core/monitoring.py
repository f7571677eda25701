"""Monitoring compositions shared by the Prefect tasks and the CLI: reference profiles, window checks, drift events.

No Prefect here: ``llmops monitor`` and ``llmops monitor --backfill`` call these directly, the monitor
flow's tasks call them and add artifacts, logs and the event.
"""
from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Optional

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmops.infra.config import PipelineConfig
from llmops.infra.store import ArtifactNotFound, ArtifactStore
from llmops.infra.traffic.compaction import closed_before, compact
from llmops.infra.traffic.log import window_partitions
from llmops.models.data import read_split
from llmops.models.model import (
    SamplingParams,
    download_run_model,
    download_run_variant,
    load_model,
    load_tokenizer,
    reference_records,
    serving_variant,
)
from llmops.models.records import CompressionReport, DatasetRef, ProfileRef, TrainRef
from llmops.models.release import Registry
from llmops.monitoring import layout
from llmops.monitoring.batch import Tokenize
from llmops.monitoring.check import check_store_window
from llmops.monitoring.profile import build_profile
from llmops.monitoring.records import DriftReport, ReferenceProfile
from llmops.monitoring.semantic import embedder_for

DRIFT_EVENT = "llmops.drift.detected"


def tokenize_with(tokenizer: PreTrainedTokenizerBase) -> Tokenize:
    """The served tokenizer in the batch form monitoring takes (no special tokens, as the server counts them)."""
    return lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def serving_params(config: PipelineConfig) -> SamplingParams:
    """What a request with the server's defaults samples with: the reference must look like such traffic."""
    return SamplingParams(max_new_tokens=config.serve.default_max_tokens, do_sample=True, temperature=1.0)


def served_records(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                   config: PipelineConfig, *, model_name: str, version: int, variant: str = "fp32") -> list[dict]:
    """Traffic records of ``texts`` as the server would capture them with its default sampling."""
    return reference_records(model, tokenizer, texts, params=serving_params(config), model_name=model_name,
                             version=version, variant=variant)


def reference_profile(store: ArtifactStore, run: TrainRef, dataset: DatasetRef, config: PipelineConfig,
                      version: int, cache_dir: Path, compression: Optional[CompressionReport] = None) -> ProfileRef:
    """Profile validation documents (at most the server's prompt size) run through the run's model, and stage the
    profile in the claimed ``version``'s folder, where registration finds it.

    The model runs as the variant ``serve.variant`` will serve (``auto``: the fastest that passed its gate), so
    serving that variant does not read as drift.
    """
    model, tokenizer, variant = _serving_model(store, run, config, cache_dir, compression)
    texts = [t for t in read_split(store, dataset, "validation") if len(t) <= config.serve.max_prompt_chars]
    prompts = random.Random(0).sample(texts, min(len(texts), config.monitor.reference_size))
    records = served_records(model, tokenizer, prompts, config, model_name=config.model_name, version=version,
                             variant=variant)
    profile = build_profile(records, tokenize_with(tokenizer), config.monitor, model_name=config.model_name,
                            model_version=version, embedder=embedder_for(config.monitor))
    uri, sha = Registry(store, config.model_name).stage_file(version, "reference_profile.json", profile.to_json())
    return ProfileRef(uri=uri, sha256=sha, model_version=version, records=len(records), signals=profile.signals)


def _serving_model(store: ArtifactStore, run: TrainRef, config: PipelineConfig, cache_dir: Path,
                   compression: Optional[CompressionReport]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    servable = {v.variant: v for v in compression.servable()} if compression else {}
    variant = serving_variant(config.serve.variant, ["fp32", *servable], compression.serve if compression else None)
    model_dir = download_run_model(store, run, cache_dir)
    if variant == "fp32":
        return (*load_model(model_dir), variant)
    if variant not in servable:
        raise ValueError(f"serve.variant={variant}: run {run.run_id} has no servable {variant} variant "
                         f"(compress.variants made {[v.variant for v in compression.variants] if compression else []})")
    folder = download_run_variant(store, run, servable[variant], cache_dir)
    return (*load_model(model_dir, variant, variant_dir=folder), variant)


def production_reference(store: ArtifactStore, config: PipelineConfig, cache_dir: Path
                         ) -> tuple[int, ReferenceProfile, PreTrainedTokenizerBase]:
    """(version, reference profile, tokenizer) of the version ``serve.alias`` points at."""
    registry = Registry(store, config.model_name)
    version = registry.resolve(config.serve.alias)
    try:
        profile = ReferenceProfile.from_json(registry.read_file(version, "reference_profile.json"))
    except ArtifactNotFound:
        raise ArtifactNotFound(f"{config.model_name} v{version} has no reference_profile.json: it was registered "
                               "without monitoring") from None
    tokenizer = load_tokenizer(registry.download(version, cache_dir))
    return version, profile, tokenizer


def run_drift_check(store: ArtifactStore, config: PipelineConfig, start: datetime, end: datetime,
                    cache_dir: Path) -> DriftReport:
    """Compare the window's traffic of the production version with that version's reference profile.

    Streamed partition by partition (other versions' records and malformed lines are counted in the
    notes); the files land in ``monitoring/<model>/<window-id>/``.
    """
    name = config.model_name
    version, profile, tokenizer = production_reference(store, config, cache_dir)
    embedder = embedder_for(config.monitor, profile.semantic) if profile.semantic is not None else None
    window = layout.window_id(start, end)
    prefix = layout.window_prefix(name, window)
    local = store.local_path(prefix)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = local if local is not None else Path(tmp)
        report = check_store_window(store, name, start, end, profile, tokenize_with(tokenizer), config.monitor,
                                    out_dir, embedder=embedder, version=version, window_id=window)
        if local is None:
            store.upload_dir(out_dir, prefix)
    return report.model_copy(update={"out_dir": store.uri_for(prefix)})


def compact_closed_hours(store: ArtifactStore, config: PipelineConfig, now: datetime, *, model: Optional[str] = None,
                         everything: bool = False, delete_jsonl: bool = False) -> tuple[datetime, list[str]]:
    """Compact the model's closed traffic hours into Parquet: (the instant hours must have ended before, the keys
    written). The scheduled compaction looks ``monitor.compact_lookback_hours`` back, ``everything`` at all hours."""
    cfg = config.monitor
    before = closed_before(now, timedelta(minutes=cfg.compact_grace_minutes), config.serve.flush_interval_s)
    since = None if everything else before - timedelta(hours=cfg.compact_lookback_hours)
    keys = compact(store, model or config.model_name, before, since=since,
                   delete_jsonl=delete_jsonl or cfg.compact_delete_jsonl)
    return before, keys


def backfill(store: ArtifactStore, config: PipelineConfig, start: datetime, stop: datetime,
             cache_dir: Path) -> Iterator[tuple[str, Optional[DriftReport]]]:
    """Replay stored traffic through the drift check, window by window: (window id, report or None when the window
    has no traffic files: a gap of days must not become thousands of empty windows in the trend)."""
    step = timedelta(minutes=config.monitor.window_minutes)
    moment = start
    while moment < stop:
        end = min(moment + step, stop)
        if any(p.parquet or p.jsonl for p in window_partitions(store, config.model_name, moment, end)):
            yield layout.window_id(moment, end), run_drift_check(store, config, moment, end, cache_dir)
        else:
            yield layout.window_id(moment, end), None
        moment = end
