"""The served model behind the app: loading what the registry alias points at, hot swaps, and the
continuous-batching scheduler that generates with it."""
from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Optional

import torch

from llmops.infra.config import ServeConfig
from llmops.models.model.generation import context_length
from llmops.models.model.variants import serving_variant
from llmops.models.release.registry import LoadedModel, Registry
from llmops.models.serving.api import ApiError, Served
from llmops.models.serving.jobs import Job
from llmops.models.serving.scheduler import Scheduler

log = logging.getLogger("llmops.serving")


class ReloadError(RuntimeError):
    """The alias points at a version that could not be loaded; the previous one keeps serving."""


def serving_device(setting: str) -> str:
    """``serve.device`` resolved: auto is CUDA when one is visible; cuda without one is an error."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("serve.device is cuda, but torch sees no CUDA device: use auto or cpu")
    return "cuda" if setting != "cpu" and torch.cuda.is_available() else "cpu"


class Engine:
    """Holds the loaded model and its scheduler. A swap waits until the rows running on the old model are done (no
    new row starts meanwhile), so no request meets two models."""

    def __init__(self, registry: Registry, cfg: ServeConfig, cache_dir: Path, alias: Optional[str] = None,
                 follows: Optional[Engine] = None):
        """``alias``: the alias served (default ``serve.alias``). ``follows``: for a canary, the production engine;
        the canary serves nothing while its alias is unset or names the version production serves."""
        self.registry, self.cfg, self.cache_dir = registry, cfg, Path(cache_dir)
        self.alias, self.follows = alias or cfg.alias, follows
        self.device = serving_device(cfg.device)
        self.cache_dir.mkdir(parents=True, exist_ok=True)  # Registry.download makes its temp dir in it
        self.scheduler: Optional[Scheduler] = None
        self._reload_lock = threading.Lock()  # one load at a time (poll and /admin/reload)
        self.loaded: Optional[LoadedModel] = None
        self.unavailable = "starting"  # why nothing is served, while ``loaded`` is None
        self._failed_version: Optional[int] = None  # the poll does not retry a version that failed to load
        self.stats: Counter = Counter(requests=0, prompts=0, truncated_prompts=0)

    def served(self) -> Served:
        """The served model; ``ApiError(503)`` saying what is missing when there is none."""
        loaded = self.loaded
        if loaded is None:
            raise ApiError(503, f"no model to serve: {self.unavailable}", type="service_unavailable",
                           code="model_not_loaded")
        return Served(loaded.name, loaded.version, context_length(loaded.model), loaded.model.config.vocab_size)

    def reload(self, force: bool = False) -> tuple[Optional[int], Optional[int]]:
        """Load the version the alias points at now if it is not the one served; return (old, new) versions.

        Args:
            force: Retry a version that failed to load before (the background poll does not).

        Raises:
            ReloadError: The alias cannot be read or its version cannot be loaded.
        """
        with self._reload_lock:
            old = self.loaded.version if self.loaded else None
            target = self._alias_target()
            if self.follows is not None and (target is None or target == self._production()):
                self._unload()
                return old, None
            if target is None or target == old or (target == self._failed_version and not force):
                return old, old
            try:
                variant = self._variant(target)
                new = self.registry.load(target, variant=variant, cache_dir=self.cache_dir,
                                         device="cpu" if variant == "int8" else self.device)
                if new.model.device.type == "cuda" and variant == "fp32":
                    new.model.to(torch.bfloat16)
            except Exception as exc:  # any load failure must leave the current model serving
                self._failed_version = target
                return self._load_failed(target, exc)
            self._failed_version = None
            if self.scheduler is None:
                self.scheduler = Scheduler(new, self.cfg.max_batch_size, self.cfg.max_prefill_tokens)
            elif not self.scheduler.swap(new, self.cfg.request_timeout_s + 30):
                log.warning("version %d waits for the running requests before it serves", new.version)
            self.loaded = new
            log.info("serving %s version %d (%s), was %s", new.name, new.version, new.variant, old)
            return old, new.version

    def _variant(self, version: int) -> str:
        """``serve.variant`` for this version: ``auto`` is the fastest variant that passed its gate."""
        manifest = self.registry.manifest(version)
        fastest = manifest.metadata.serving_variant if manifest.metadata else None
        return serving_variant(self.cfg.variant, manifest.variants, fastest, self.device)

    def _production(self) -> Optional[int]:
        loaded = self.follows.loaded
        return loaded.version if loaded else None

    def _unload(self) -> None:
        """Stop serving (a canary whose alias was cleared): new requests go elsewhere, those running finish."""
        if self.loaded is None:
            return
        scheduler, version = self.scheduler, self.loaded.version
        self.loaded, self.scheduler, self.unavailable = None, None, f"no {self.alias!r} alias"
        scheduler.stop(drain=True, timeout_s=self.cfg.request_timeout_s + 30)
        log.info("%s version %d is no longer served", self.alias, version)

    def _alias_target(self) -> Optional[int]:
        name, alias = self.registry.name, self.alias
        try:
            target = self.registry.alias(alias)
        except Exception as exc:
            if self.loaded is None:
                self.unavailable = f"cannot read the {alias!r} alias of model {name!r}: {exc}"
            raise ReloadError(f"cannot read the {alias!r} alias of model {name!r}: {exc}") from exc
        if target is None and self.loaded is None:
            self.unavailable = (f"model {name!r} has no {alias!r} alias yet: register a version and "
                                f"point {alias!r} at it, then POST /admin/reload")
        return target

    def _load_failed(self, version: int, exc: Exception) -> tuple[Optional[int], Optional[int]]:
        name = self.registry.name
        message = f"cannot load {name} version {version} (variant {self.cfg.variant}): {exc}"
        log.error("%s; %s", message, "nothing is served" if self.loaded is None else
                  f"version {self.loaded.version} keeps serving")
        if self.loaded is None:
            self.unavailable = message
        raise ReloadError(message) from exc

    def submit(self, jobs: list[Job]) -> None:
        if self.scheduler is None:
            self.served()  # raises the 503 saying why
        self.scheduler.submit(jobs)

    def count(self, per_prompt: list[list[Job]]) -> None:
        """Count a finished request (its jobs, prompt by prompt) in the /health stats."""
        truncated = sum(1 for group in per_prompt if group[0].truncated)
        if truncated:
            log.info("%d prompt(s) longer than the context leaves them: left-truncated", truncated)
        self.stats.update(requests=1, prompts=len(per_prompt), truncated_prompts=truncated)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    def health(self) -> dict:
        loaded = self.loaded
        return {"alias": self.alias, "version": loaded.version if loaded else None,
                "variant": loaded.variant if loaded else None, "variant_setting": self.cfg.variant,
                "device": self.device, "dtype": str(loaded.model.dtype).removeprefix("torch.") if loaded else None}
