"""Dataset snapshots in the store: content hash, Parquet splits and quarantine first, manifest committed last."""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmops.infra.config import DataConfig
from llmops.infra.store import ArtifactStore, sha256_bytes
from llmops.models.records import Adaptation, DatasetRef, SplitRef

logger = logging.getLogger("llmops.ingest")

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
_KIND = "llmops.dataset-snapshot"


@dataclass(frozen=True)
class Kept:
    """An accepted record: stripped text and where it was read."""

    text: str
    source: str
    line: int


def snapshot_sha256(splits: dict[str, list[Kept]]) -> str:
    """sha256 over the split names and their texts, in order (locations do not count)."""
    digest = hashlib.sha256()
    for name in SPLITS:
        digest.update(f"split:{name}:{len(splits[name])}\n".encode())
        for record in splits[name]:
            data = record.text.encode("utf-8")
            digest.update(f"{len(data)}:".encode() + data)  # length-prefixed: no two inputs collide
    return digest.hexdigest()


def write_snapshot(store: ArtifactStore, cfg: DataConfig, splits: dict[str, list[Kept]],
                   quarantine: list[dict[str, Any]], stats: dict[str, Any], scratch: Path) -> DatasetRef:
    """Write ``datasets/<name>/<sha16>/`` unless its manifest exists; return its ref either way.

    Args:
        store: Where the snapshot goes.
        cfg: The configuration used (recorded in the manifest).
        splits: Accepted records per split, in order.
        quarantine: Rejected records, one dict each (reason, source, line, detail, message, preview).
        stats: Counts to record: ``rejected`` per reason, ``duplicates``, ``per_source``.
        scratch: Local folder for the Parquet files before upload.
    """
    sha = snapshot_sha256(splits)
    folder = f"datasets/{cfg.dataset_name}/{sha[:16]}"
    manifest_key = f"{folder}/{MANIFEST}"
    if store.exists(manifest_key):
        logger.info("snapshot %s already exists: reusing it", store.uri_for(manifest_key))
        return load_ref(store, store.uri_for(manifest_key))
    files = {f"{name}.parquet": _put_parquet(store, f"{folder}/{name}.parquet", splits[name], scratch)
             for name in SPLITS}
    lines = "".join(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n" for entry in quarantine).encode()
    files[QUARANTINE] = {"sha256": store.put_bytes(f"{folder}/{QUARANTINE}", lines), "bytes": len(lines)}
    manifest = {
        "kind": _KIND, "name": cfg.dataset_name, "sha256": sha,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "splits": {name: {"file": f"{name}.parquet", "records": len(splits[name])} for name in SPLITS},
        "quarantine": {"file": QUARANTINE, "records": len(quarantine)},
        "files": files, "sources": list(cfg.sources), "config": cfg.model_dump(mode="json"), **stats,
    }
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    # The manifest is the commit point; if a concurrent run committed first, its snapshot wins.
    if not store.put_if_absent(manifest_key, data):
        logger.info("snapshot %s was committed concurrently: reusing it", store.uri_for(manifest_key))
    return load_ref(store, store.uri_for(manifest_key))


def _put_parquet(store: ArtifactStore, key: str, records: list[Kept], scratch: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "text": pa.array([r.text for r in records], pa.string()),
        "source": pa.array([r.source for r in records], pa.string()),
        "line": pa.array([r.line for r in records], pa.int64()),
    })
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / "split.parquet"
        pq.write_table(table, path)
        return {"sha256": store.put_file(key, path), "bytes": path.stat().st_size}


def load_ref(store: ArtifactStore, manifest_uri: str) -> DatasetRef:
    """The ``DatasetRef`` of the snapshot whose manifest is at ``manifest_uri``."""
    key = store.key_for(manifest_uri)
    manifest = store.get_json(key)
    if not isinstance(manifest, dict) or manifest.get("kind") != _KIND:
        raise ValueError(f"{manifest_uri} is not a dataset snapshot manifest")
    folder = key.rsplit("/", 1)[0]
    files = manifest["files"]
    splits = {
        name: SplitRef(uri=store.uri_for(f"{folder}/{info['file']}"), sha256=files[info["file"]]["sha256"],
                       records=info["records"], bytes=files[info["file"]]["bytes"])
        for name, info in sorted(manifest["splits"].items(), key=lambda item: SPLITS.index(item[0]))
    }
    return DatasetRef(
        name=manifest["name"], uri=manifest_uri, sha256=manifest["sha256"], splits=splits,
        rejected=manifest["rejected"], quarantine_uri=store.uri_for(f"{folder}/{manifest['quarantine']['file']}"),
        sources=manifest["sources"],
        adaptation=Adaptation.model_validate(manifest["adaptation"]) if manifest.get("adaptation") else None,
    )


def read_split(store: ArtifactStore, ref: DatasetRef, split: str) -> list[str]:
    """The texts of one split, after checking the file against the sha256 the ref carries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if split not in ref.splits:
        raise KeyError(f"dataset {ref.name} has no split {split!r}; it has {sorted(ref.splits)}")
    part = ref.splits[split]
    data = store.get_bytes(store.key_for(part.uri))
    if sha256_bytes(data) != part.sha256:
        raise ValueError(f"{part.uri} does not match its manifest's sha256: the snapshot was modified")
    return pq.read_table(pa.BufferReader(data), columns=["text"]).column("text").to_pylist()
