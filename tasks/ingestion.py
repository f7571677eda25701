"""Ingest stage: read and validate the sources, quarantine bad records, snapshot the splits."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from llmops.infra.config import DataConfig
from llmops.models.data import ingest
from llmops.models.records import DatasetRef
from llmops.tasks.core.context import artifact_key, cache_dir, store, timeout_s


@task(name="ingest-data", retries=2, retry_delay_seconds=5, timeout_seconds=timeout_s("ingest-data"))
def ingest_data(cfg: DataConfig, model_name: str) -> DatasetRef:
    """Not cached by Prefect: sources may change under the same names; the snapshot itself is content-addressed."""
    ref = ingest(cfg, store(), model_name=model_name, cache_dir=cache_dir())
    rows = [{"split": s, "records": r.records, "bytes": r.bytes} for s, r in ref.splits.items()]
    rows += [{"split": f"quarantined: {reason}", "records": n, "bytes": None}
             for reason, n in sorted(ref.rejected.items())]
    create_table_artifact(rows, key=artifact_key(cfg.dataset_name, "snapshot"),
                          description=f"snapshot {ref.sha256[:16]}")
    get_run_logger().info("snapshot %s: %s; quarantined %s", ref.sha256[:16],
                          {s: r.records for s, r in ref.splits.items()}, ref.rejected or "nothing")
    return ref
