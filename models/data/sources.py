"""Ingest sources: paths, globs, s3://, saved datasets, builtin:// and traffic:// resolved to readable units."""
from __future__ import annotations

import base64
import glob
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from llmops.infra.config import DataConfig
from llmops.infra.store import ArtifactStore, StoreError, open_store
from llmops.infra.traffic.log import Partition, malformed_lines, partition_hour, read_partition, traffic_prefix
from llmops.infra.traffic.parquet import open_parquet
from llmops.models.data.corpus import BUILTIN_CORPORA
from llmops.models.data.formats import (
    SUFFIXES,
    Candidate,
    IngestError,
    dataset_records,
    field_value,
    is_saved_dataset,
    jsonl_records,
    read_file,
    rejected,
)
from llmops.models.data.redaction import Redactor

logger = logging.getLogger("llmops.ingest")

TRAFFIC_FIELD = "prompt"
_TRAFFIC_BATCH = 8192  # rows of a compacted hour read at once


@dataclass(frozen=True)
class Unit:
    """One readable piece of a source (a file, an S3 object, a saved dataset, a corpus, a traffic log)."""

    label: str
    read: Callable[[], Iterator[Candidate]]


def resolve_source(spec: str, cfg: DataConfig, store: ArtifactStore, *, model_name: str,
                   cache_dir: Path, now: Optional[datetime] = None) -> list[Unit]:
    """The units ``spec`` names, in a deterministic order; structural problems raise ``IngestError``.

    Args:
        spec: One entry of ``cfg.sources``.
        cfg: The data configuration (text field, chunk size, traffic window).
        store: The artifact store ``traffic://`` reads from.
        model_name: The model whose traffic a bare ``traffic://`` means.
        cache_dir: Where S3 objects and built-in corpora are cached.
        now: The end of the traffic window (default: the current time).
    """
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme == "builtin":
        return [_builtin_unit(spec, cache_dir)]
    if scheme == "traffic":
        return _traffic_units(spec, store, model_name, cfg, now or datetime.now(timezone.utc))
    if scheme == "s3":
        return _s3_units(spec, cfg, cache_dir)
    if scheme in ("", "file"):
        return _local_units(spec.removeprefix("file://"), cfg)
    raise IngestError(f"source {spec!r}: unknown scheme {scheme + '://'!r}; "
                      "use a path, s3://, builtin:// or traffic://")


def _file_unit(path: Path, cfg: DataConfig, label: Optional[str] = None) -> Unit:
    # Records of a text file never exceed max_chars merely because the chunk size was set higher.
    chunk = min(cfg.chunk_chars, cfg.max_chars)
    label = label or str(path)
    return Unit(label, partial(read_file, path, label=label, text_field=cfg.text_field, chunk_chars=chunk))


def _local_units(spec: str, cfg: DataConfig) -> list[Unit]:
    if glob.has_magic(spec):
        paths = sorted(Path(p) for p in glob.glob(spec, recursive=True))
        if not paths:
            raise IngestError(f"source {spec!r}: the pattern matches no files")
        return [unit for path in paths for unit in _path_units(path, cfg, spec)]
    path = Path(spec).expanduser()
    if not path.exists():
        raise IngestError(f"source {spec!r}: {path} does not exist")
    return _path_units(path, cfg, spec)


def _path_units(path: Path, cfg: DataConfig, spec: str) -> list[Unit]:
    if is_saved_dataset(path):
        return [Unit(str(path), partial(dataset_records, path, cfg.text_field))]
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise IngestError(f"source {spec!r}: {path} has unsupported type {path.suffix or '(none)'!r}; "
                              f"use one of {', '.join(SUFFIXES)}, a folder or a saved dataset")
        return [_file_unit(path, cfg)]
    units = _folder_units(path, cfg)
    if not units:
        raise IngestError(f"source {spec!r}: folder {path} holds no {'/'.join(SUFFIXES)} files or saved datasets")
    return units


def _folder_units(root: Path, cfg: DataConfig) -> list[Unit]:
    units = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if is_saved_dataset(here):  # its .arrow shards are read through `datasets`, not as files
            units.append(Unit(str(here), partial(dataset_records, here, cfg.text_field)))
            dirs.clear()
            continue
        # Hidden folders and files (.git, .ipynb_checkpoints) are tool state, not corpus.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        units += [_file_unit(here / name, cfg) for name in sorted(files)
                  if not name.startswith(".") and name.lower().endswith(SUFFIXES)]
    return units


def _s3_units(spec: str, cfg: DataConfig, cache_dir: Path) -> list[Unit]:
    base = spec.rstrip("/")
    if base.lower().endswith(SUFFIXES):  # one object: list its folder, keep it
        parent, _, name = base.rpartition("/")
        if parent == "s3:/":
            raise IngestError(f"source {spec!r}: an S3 source looks like s3://bucket/prefix")
        names = [name]
        base = parent
    else:
        names = None
    try:
        bucket_store = open_store(base)
        keys = bucket_store.list("")
    except (StoreError, ValueError) as exc:
        raise IngestError(f"source {spec!r}: cannot list S3 objects: {exc}") from None
    keys = [k for k in keys if k.lower().endswith(SUFFIXES) and (names is None or k in names)]
    if not keys:
        raise IngestError(f"source {spec!r}: no {'/'.join(SUFFIXES)} objects under this S3 prefix")
    local = Path(cache_dir) / "s3" / base[len("s3://"):]
    return [Unit(f"{base}/{key}", partial(_read_s3, bucket_store, key, local / key, cfg, f"{base}/{key}"))
            for key in keys]


def _read_s3(store: ArtifactStore, key: str, dest: Path, cfg: DataConfig, label: str) -> Iterator[Candidate]:
    try:
        store.get_file(key, dest)
    except StoreError as exc:
        raise IngestError(f"{label}: download failed: {exc}") from None
    return _file_unit(dest, cfg, label).read()


def _builtin_unit(spec: str, cache_dir: Path) -> Unit:
    parts = urlsplit(spec)
    corpus = BUILTIN_CORPORA.get(parts.netloc)
    if corpus is None or parts.path.strip("/"):
        known = ", ".join(f"builtin://{name}" for name in BUILTIN_CORPORA)
        raise IngestError(f"source {spec!r}: unknown built-in corpus; known: {known}")
    max_bytes = _max_bytes(spec, parse_qs(parts.query))
    return Unit(spec, partial(_read_builtin, corpus, max_bytes, Path(cache_dir) / "corpus"))


def _max_bytes(spec: str, query: dict[str, list[str]]) -> Optional[int]:
    unknown = set(query) - {"max_bytes"}
    if unknown:
        raise IngestError(f"source {spec!r}: unknown option(s) {sorted(unknown)}; only max_bytes is understood")
    if "max_bytes" not in query:
        return None
    value = query["max_bytes"][-1]
    if not value.isdigit() or int(value) < 1:
        raise IngestError(f"source {spec!r}: max_bytes must be a positive integer, got {value!r}")
    return int(value)


def _read_builtin(corpus, max_bytes: Optional[int], cache_dir: Path) -> Iterator[Candidate]:
    for doc in corpus(max_bytes, cache_dir=cache_dir):
        yield Candidate(doc.path, doc.line, doc.text)


def _traffic_units(spec: str, store: ArtifactStore, model_name: str, cfg: DataConfig, now: datetime) -> list[Unit]:
    parts = urlsplit(spec)
    if parts.path.strip("/") or parts.query:
        raise IngestError(f"source {spec!r}: a traffic source looks like traffic:// or traffic://<model>")
    model = parts.netloc or model_name
    prefix = traffic_prefix(model)
    try:
        keys = store.list(prefix)
    except ValueError as exc:
        raise IngestError(f"source traffic://{model}: not a valid model name ({exc})") from None
    # A whole hour's folder is read if any of it falls inside the window.
    since = now - timedelta(days=cfg.traffic_days, hours=1)
    hours: dict[str, list[str]] = {}
    for key in keys:
        if _in_window(key, since):
            hours.setdefault(key.rsplit("/", 1)[0], []).append(key)
    units = []
    redactor = Redactor(cfg.redact)  # captured prompts are redacted before they become training data
    for folder, listed in sorted(hours.items()):
        part = read_partition(store, folder, listed)  # a compacted hour: its Parquet file, then late JSONL files
        if part.parquet:
            units.append(Unit(store.uri_for(part.parquet), partial(_redacted, redactor, _read_compacted, store, part)))
        units += [Unit(store.uri_for(k), partial(_redacted, redactor, _read_traffic, store, k)) for k in part.jsonl]
    logger.info("traffic://%s: %d log file(s) in %d hour(s) within the last %d days",
                model, len(units), len(hours), cfg.traffic_days)
    return units


def _in_window(key: str, since: datetime) -> bool:
    hour = partition_hour(key)
    if hour is None:
        logger.warning("ignoring %s: not under traffic/<model>/<yyyy>/<mm>/<dd>/<hh>/", key)
        return False
    return hour > since


def _redacted(redactor: Redactor, read: Callable[..., Iterator[Candidate]], *args) -> Iterator[Candidate]:
    for candidate in read(*args):
        if candidate.text is None:
            yield candidate
            continue
        text, _ = redactor(candidate.text)
        yield (replace(candidate, text=text) if text is not None else
               rejected(candidate.source, candidate.line, "redaction_dropped", "data.redact.hook dropped it"))


def _read_traffic(store: ArtifactStore, key: str) -> Iterator[Candidate]:
    return jsonl_records(store.get_bytes(key), TRAFFIC_FIELD, store.uri_for(key))


def _read_compacted(store: ArtifactStore, part: Partition) -> Iterator[Candidate]:
    """Prompts of a compacted hour, each located at its JSONL file and line; then the lines compaction kept
    as unreadable, judged as a JSONL reader judges them (a bad ``ts`` does not stop a prompt being used)."""
    with open_parquet(store, part.parquet) as parquet:
        columns = [TRAFFIC_FIELD, "extra", "source_file", "source_line"]
        for batch in parquet.iter_batches(batch_size=_TRAFFIC_BATCH, columns=columns):
            for prompt, extra, name, line in zip(*(column.to_pylist() for column in batch.columns)):
                yield _compacted_prompt(prompt, extra, store.uri_for(f"{part.prefix}/{name}"), line)
    for _, entry in malformed_lines(store, part):
        raw = base64.b64decode(entry["raw_base64"]) if "raw_base64" in entry else entry["raw"].encode("utf-8")
        source = store.uri_for(f"{part.prefix}/{entry['file']}")
        yield from (replace(c, line=entry["line"]) for c in jsonl_records(raw, TRAFFIC_FIELD, source))


def _compacted_prompt(prompt: Optional[str], extra: Optional[str], source: str, line: int) -> Candidate:
    fields = json.loads(extra) if extra is not None else {}
    if TRAFFIC_FIELD in fields:  # not a string: kept as written, rejected as the JSONL reader rejects it
        return field_value(fields[TRAFFIC_FIELD], TRAFFIC_FIELD, source, line)
    if prompt is None:  # compaction stores an absent prompt and a null one alike
        return rejected(source, line, "missing_field",
                        f"no field {TRAFFIC_FIELD!r} (absent or null in the compacted hour)")
    return Candidate(source, line, prompt)
