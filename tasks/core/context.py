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
    """A link a person can open: file:// for the local store, the URI itself otherwise."""
    return f"file://{uri}" if uri.startswith("/") else uri
