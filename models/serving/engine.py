"""The served model behind the app: loading what the registry alias points at, hot swaps, and locked CPU-bound
generation."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llmops.infra.config import ServeConfig
from llmops.models.model.generation import Completion, PromptScore, complete, context_length, score_prompts
from llmops.models.release.registry import LoadedModel, Registry
from llmops.models.serving.api import ApiError, ParsedRequest, Served

log = logging.getLogger("llmops.serving")


class ReloadError(RuntimeError):
    """The alias points at a version that could not be loaded; the previous one keeps serving."""


@dataclass(frozen=True)
class Generation:
    """What one request produced, and with which model."""

    served: Served
    variant: str
    results: list[list[Completion]]  # per prompt, n completions
    prompt_tokens: list[int]  # whole prompt, before truncation to the context
    scores: Optional[list[PromptScore]]  # only when capturing
    latency_ms: float  # wall time of generation (scoring excluded)


class Engine:
    """Holds the loaded model; generation and swaps happen under one lock, so a swap never meets a half-done request.

    The lock is a ``threading.Lock`` taken inside worker threads: waiting on it never blocks the event loop.
    """

    def __init__(self, registry: Registry, cfg: ServeConfig, cache_dir: Path):
        self.registry, self.cfg, self.cache_dir = registry, cfg, Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)  # Registry.download makes its temp dir in it
        self.lock = threading.Lock()
        self._reload_lock = threading.Lock()  # one load at a time (poll and /admin/reload)
        self.loaded: Optional[LoadedModel] = None
        self.unavailable = "starting"  # why nothing is served, while ``loaded`` is None
        self._failed_version: Optional[int] = None  # the poll does not retry a version that failed to load
        # keys fixed up front: /health copies the counter from the event loop while workers update it
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
            if target is None or target == old or (target == self._failed_version and not force):
                return old, old
            try:
                new = self.registry.load(target, variant=self.cfg.variant, cache_dir=self.cache_dir)
            except Exception as exc:  # any load failure must leave the current model serving
                self._failed_version = target
                return self._load_failed(target, exc)
            self._failed_version = None
            with self.lock:  # waits for the request in flight; the next one sees the new model
                self.loaded = new
            log.info("serving %s version %d (%s), was %s", new.name, new.version, new.variant, old)
            return old, new.version

    def _alias_target(self) -> Optional[int]:
        name, alias = self.registry.name, self.cfg.alias
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
        message = f"cannot load {name} version {version} ({self.cfg.variant}): {exc}"
        log.error("%s; %s", message, "nothing is served" if self.loaded is None else
                  f"version {self.loaded.version} keeps serving")
        if self.loaded is None:
            self.unavailable = message
        raise ReloadError(message) from exc

    def generate(self, request: ParsedRequest, score: bool) -> Generation:
        """Generate (and score, when ``score``) under the lock; runs in a worker thread."""
        with self.lock:
            loaded = self.loaded
            served = self.served()
            if request.version is not None and request.version != served.version:
                raise ApiError(404, f"{served.name}:{request.version} is no longer served (now version "
                                    f"{served.version})", param="model", code="model_not_found")
            # tokenizer calls stay under the lock too: fast tokenizers are not safe across threads
            prompt_tokens = [len(loaded.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in request.prompts]
            self._count(request, prompt_tokens, served.context_length)
            start = time.perf_counter()
            results = complete(loaded.model, loaded.tokenizer, request.prompts, request.sampling, n=request.n)
            latency_ms = (time.perf_counter() - start) * 1000
            scores = score_prompts(loaded.model, loaded.tokenizer, request.prompts) if score else None
        return Generation(served, loaded.variant, results, prompt_tokens, scores, latency_ms)

    def _count(self, request: ParsedRequest, prompt_tokens: list[int], ctx: int) -> None:
        # generation.encode_prompt keeps the last (ctx - max_tokens) ids, the eos marker included
        budget = max(1, ctx - request.sampling.max_new_tokens)
        truncated = sum(1 for t in prompt_tokens if t + 1 > budget)
        if truncated:
            log.info("%d prompt(s) longer than the %d tokens left for them: left-truncated", truncated, budget)
        self.stats.update(requests=1, prompts=len(prompt_tokens), truncated_prompts=truncated)
