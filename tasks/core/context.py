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
