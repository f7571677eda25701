"""Production and canary side by side: which engine answers a request, the shadow copy, and each version's outcomes.

The canary engine serves the version the canary alias names (nothing while it is unset). In ``split`` mode it answers
``serve.canary.share`` of the requests, the same users always to the same side (a hash of ``user`` and the canary's
version); in ``shadow`` mode production answers everything and the canary answers a copy, captured, never returned.
Each version's answered and failed requests are counted and written to ``serving/<model>/outcomes/<instance>.json``
with every flush, so the canary check can compare error rates (a failed request leaves no traffic record).
"""
from __future__ import annotations

import hashlib
import logging
import random
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Optional

from llmops.infra.config import CanaryConfig
from llmops.infra.store import ArtifactStore
from llmops.infra.traffic.log import outcomes_prefix
from llmops.models.serving.engine import Engine, ReloadError

log = logging.getLogger("llmops.serving")


class Rollout:
    def __init__(self, production: Engine, canary: Engine, cfg: CanaryConfig):
        self.production, self.canary, self.cfg = production, canary, cfg
        self.outcomes: Counter = Counter()  # (version, "ok" | "errors") -> requests
        self.instance = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        self._written: Optional[dict] = None

    @property
    def engines(self) -> list[Engine]:
        return [self.production, self.canary]

    def route(self, user: Optional[str]) -> Engine:
        """The engine that answers: the canary for its share of users (or of requests, without a user)."""
        canary = self.canary.loaded
        if canary is None or self.cfg.mode != "split" or self.cfg.share <= 0:
            return self.production
        if user:
            digest = hashlib.sha256(f"{user}\0{canary.version}".encode()).digest()
            draw = int.from_bytes(digest[:8], "big") / 2**64
        else:
            draw = random.random()
        return self.canary if draw < self.cfg.share else self.production

    def pinned(self, model: str) -> Optional[Engine]:
        """The canary, for a request that names it as ``name:version``."""
        canary = self.canary.loaded
        return self.canary if canary is not None and model == f"{canary.name}:{canary.version}" else None

    def shadow(self) -> Optional[Engine]:
        """The engine that answers a copy of every request, in shadow mode while a canary is served."""
        return self.canary if self.canary.loaded is not None and self.cfg.mode == "shadow" else None

    def reload(self, force: bool = False) -> tuple[Optional[int], Optional[int]]:
        """Follow both aliases; return production's (old, new). A canary that cannot load is logged, not raised."""
        versions = self.production.reload(force)
        try:
            self.canary.reload(force)
        except ReloadError as exc:
            log.warning("canary: %s", exc)
        return versions

    def count(self, version: Optional[int], ok: bool) -> None:
        if version is not None:
            self.outcomes[(version, "ok" if ok else "errors")] += 1

    def write(self, store: ArtifactStore, model: str) -> None:
        """This process's counts per version (cumulative since it started), when they changed."""
        versions: dict[str, dict[str, int]] = {}
        for (version, kind), n in sorted(self.outcomes.items()):
            versions.setdefault(str(version), {"ok": 0, "errors": 0})[kind] = n
        if versions == self._written:
            return
        store.put_json(f"{outcomes_prefix(model)}{self.instance}.json", {
            "instance": self.instance, "updated_at": datetime.now(timezone.utc).isoformat(), "versions": versions})
        self._written = versions

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop()
