"""What the service tests (markers container, postgres, browser) need from the machine, and what happens without it.

On a developer's machine a missing prerequisite (no Docker daemon, no PostgreSQL binaries, no Chromium) skips the
test with the reason. Under ``.ci/run`` (``LLMOPS_REQUIRE_SERVICES=1``, set after ``.ci/system`` installed and
started everything) the same absence fails the test: CI must not pass by skipping what it exists to run.
"""
from __future__ import annotations

import os

import pytest


def require(available: bool, what: str) -> None:
    """Skip (or, under ``LLMOPS_REQUIRE_SERVICES=1``, fail) the calling test unless ``available``."""
    if available:
        return
    if os.environ.get("LLMOPS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} (LLMOPS_REQUIRE_SERVICES=1: .ci/system should have provided it)")
    pytest.skip(what)
