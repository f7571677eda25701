"""What every task needs from the environment: the store, the local cache, names for Prefect artifacts."""
from __future__ import annotations

import re
from pathlib import Path

from llmops.infra.settings import get_settings
from llmops.infra.store import ArtifactStore, open_store


def store() -> ArtifactStore:
    return open_store()


def cache_dir() -> Path:
    path = Path(get_settings().cache_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


HOUR = 3600.0
# Generous ceilings: a task past its own is failed by Prefect (and retried where it has retries) instead of holding
# its deployment's one-at-a-time slot forever. LLMOPS_TASK_TIMEOUTS (JSON) overrides any of them.
TASK_TIMEOUTS_S: dict[str, float] = {
    "ingest-data": 2 * HOUR, "build-tokenizer": 2 * HOUR, "pack-data": 2 * HOUR, "train-model": 48 * HOUR,
    "evaluate-model": 4 * HOUR, "compress-model": 2 * HOUR, "build-reference-profile": 2 * HOUR,
    "reserve-version": 300.0, "register-model": 2 * HOUR, "promote-model": HOUR, "compact-traffic": 2 * HOUR,
    "check-drift": 2 * HOUR, "plan-drift-check": 600.0, "accumulate-partition": HOUR, "finish-drift-check": HOUR,
    "decide-drift-event": 600.0, "prepare-adaptation": 2 * HOUR, "check-canary": HOUR,
    "apply-canary-verdict": 300.0, "distill-model": 48 * HOUR, "prune-model": 1 * HOUR, "resolve-teacher": 1 * HOUR,
}
# Tasks that hold the accelerator carry this tag; `llmops deploy` and `llmops up` limit it to one run at a time,
# so a manual train and a retrain never share one GPU.
ACCELERATOR_TAG = "llmops-accelerator"


def timeout_s(task_name: str) -> float:
    """The task's timeout: ``LLMOPS_TASK_TIMEOUTS``'s entry, else its default."""
    overrides = get_settings().task_timeouts
    unknown = set(overrides) - set(TASK_TIMEOUTS_S)
    if unknown:
        raise ValueError(f"LLMOPS_TASK_TIMEOUTS names unknown tasks {sorted(unknown)}; known: "
                         f"{sorted(TASK_TIMEOUTS_S)}")
    return float(overrides.get(task_name, TASK_TIMEOUTS_S[task_name]))


CANARY_STARTED = "llmops.model.canary_started"  # a promotion made a canary: the canary deployment checks it later


def model_resource(name: str) -> dict[str, str]:
    """The Prefect event resource of model ``name``: what llmops' events name, and deployment triggers match."""
    return {"prefect.resource.id": f"llmops.model.{name}", "prefect.resource.name": name}


def artifact_key(*parts: object) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from readable parts."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")[:100]


def link(uri: str) -> str:
    """A link a person can open from another host where the store allows: a presigned HTTPS URL for an S3 store
    (``LLMOPS_REPORT_URL_EXPIRY_S``), ``LLMOPS_REPORT_BASE_URL`` + the key for a local store that ``llmops reports``
    serves; else file:// (local store) or the URI itself."""
    settings, st = get_settings(), store()
    try:
        key = st.key_for(uri)
    except ValueError:  # not in this store
        return f"file://{uri}" if uri.startswith("/") else uri
    signed = st.browser_url(key, settings.report_url_expiry_s)
    if signed:
        return signed
    if settings.report_base_url and st.local_path(key) is not None:
        return f"{settings.report_base_url.rstrip('/')}/{key}"
    return f"file://{uri}" if uri.startswith("/") else uri
