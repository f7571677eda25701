"""Shared fixtures: every test runs with its own store, cache and Prefect home, offline."""
from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Prefect keeps results, the ephemeral database and logs under PREFECT_HOME: never the user's ~/.prefect
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="llmops-test-prefect-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "llmops")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """A fresh local store and cache per test, so tests never see each other's artifacts."""
    from llmops.infra.settings import get_settings

    monkeypatch.setenv("LLMOPS_STORE_URI", str(tmp_path / "store"))
    monkeypatch.setenv("LLMOPS_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core box its barriers cost seconds.

    Use per module: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
