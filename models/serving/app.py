"""The serving app: an OpenAI-compatible FastAPI app over the registry's aliased model, with traffic capture and
hot reload."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Optional

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmops.infra.config import ServeConfig
from llmops.infra.settings import api_keys, get_settings
from llmops.infra.store import ArtifactStore
from llmops.infra.traffic.record import TrafficRecord
from llmops.models.model.traffic import traffic_record
from llmops.models.release.registry import Registry
from llmops.models.serving.api import (
    ApiError,
    CompletionRequest,
    ParsedRequest,
    install_error_handlers,
    parse_completion,
)
from llmops.models.serving.capture import CaptureFull, TrafficBuffer
from llmops.models.serving.chat import ChatCompletionRequest, as_completion, chat_prompt
from llmops.models.serving.completions import Flight
from llmops.models.serving.engine import Engine, ReloadError
from llmops.models.serving.guard import Guard, Keys
from llmops.models.serving.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from llmops.models.serving.rollout import Rollout

log = logging.getLogger("llmops.serving")


def create_app(store: ArtifactStore, model_name: str, cfg: ServeConfig, cache_dir: Path,
               keys: Optional[list[str]] = None) -> FastAPI:
    """The app serving ``model_name`` at alias ``cfg.alias`` in variant ``cfg.variant``.

    The model is loaded here; without one (no alias yet, a load error) the app still starts and
    answers 503 saying what is missing until a reload finds a model. ``keys`` (default: ``LLMOPS_API_KEY`` and
    ``LLMOPS_API_KEY_FILE``) are required on every route but /health; without any, only /admin/* needs one:
    the process's own admin key (``app.state.keys.admin``).
    """
    registry = Registry(store, model_name)
    engine = Engine(registry, cfg, Path(cache_dir))
    rollout = Rollout(engine, Engine(registry, cfg, Path(cache_dir), alias=cfg.canary.alias, follows=engine),
                      cfg.canary)
    try:
        rollout.reload()
    except ReloadError as exc:
        log.error("starting without a model: %s", exc)
    app = FastAPI(title=f"llmops: {model_name}", lifespan=_lifespan)
    app.state.engine, app.state.rollout, app.state.store = engine, rollout, store
    app.state.cfg = cfg
    app.state.model_name = model_name
    # per store and model: what was spooled for one store is never shipped to another
    spool = Path(cache_dir) / "spool" / hashlib.sha256(store.uri.encode()).hexdigest()[:12] / model_name
    app.state.buffer = (TrafficBuffer(store, model_name, cfg.capture_buffer_limit, spool,
                                      int(cfg.capture_spool_mb * 2**20)) if cfg.capture else None)
    app.state.flush_wanted = None  # an asyncio.Event, created in the server's loop by _lifespan
    app.state.keys = Keys(api_keys(get_settings()) if keys is None else keys)
    app.state.metrics = ServerMetrics()
    app.state.in_flight = 0
    app.state.shadows = set()
    app.add_middleware(Guard, keys=app.state.keys, max_body_bytes=cfg.max_body_bytes, metrics=app.state.metrics)
    install_error_handlers(app)
    _add_routes(app)
    return app


# -- background work ----------------------------------------------------------------------------
@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    cfg, buffer = app.state.cfg, app.state.buffer
    app.state.flush_wanted = asyncio.Event()
    tasks = []
    if buffer is not None:
        tasks.append(asyncio.create_task(_flush_loop(app), name="llmops-flush"))
    if cfg.reload_interval_s > 0:
        tasks.append(asyncio.create_task(_reload_loop(app), name="llmops-reload"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await anyio.to_thread.run_sync(app.state.rollout.stop)
        if buffer is not None:
            await anyio.to_thread.run_sync(_flush_logged, app)
            buffer.close()


def _flush_logged(app: FastAPI) -> bool:
    """Flush the records and write the outcome counts; a store failure is logged, never raised (the records stay
    buffered). Return success."""
    buffer: TrafficBuffer = app.state.buffer
    try:
        if len(buffer):
            buffer.flush()
        app.state.rollout.write(app.state.store, app.state.model_name)
        return True
    except Exception:
        log.exception("writing %d traffic records failed; kept for the next flush", len(buffer))
        return False


async def _flush_loop(app: FastAPI) -> None:
    """Flush every ``flush_interval_s``, or sooner once ``flush_every`` records wait."""
    cfg, wanted = app.state.cfg, app.state.flush_wanted
    while True:
        try:
            await asyncio.wait_for(wanted.wait(), timeout=cfg.flush_interval_s)
        except asyncio.TimeoutError:
            pass
        wanted.clear()
        if not await anyio.to_thread.run_sync(_flush_logged, app):
            await asyncio.sleep(cfg.flush_interval_s)  # back off: do not retry on every request


async def _reload_loop(app: FastAPI) -> None:
    """Swap in a newly promoted version when the alias moves; start or stop serving a canary."""
    rollout: Rollout = app.state.rollout
    while True:
        await asyncio.sleep(app.state.cfg.reload_interval_s)
        try:
            await anyio.to_thread.run_sync(rollout.reload)
        except ReloadError as exc:
            log.warning("alias check: %s", exc)


# -- routes ---------------------------------------------------------------------------------------
def _health(app: FastAPI) -> JSONResponse:
    engine: Engine = app.state.engine
    rollout: Rollout = app.state.rollout
    loaded = engine.loaded
    body = {"status": "ok" if loaded else "unavailable", "model": engine.registry.name, **engine.health()}
    if loaded is None:
        body["reason"] = engine.unavailable
    if rollout.canary.loaded is not None:
        body["canary"] = {**rollout.canary.health(), "mode": rollout.cfg.mode, "share": rollout.cfg.share}
    body["stats"] = dict(engine.stats)
    if app.state.buffer is not None:
        body["capture"] = app.state.buffer.stats()
    return JSONResponse(body, status_code=200 if loaded else 503)


def _model_cards(rollout: Rollout) -> list[dict]:
    """OpenAI's model objects, plus what is served behind each id: the alias, the version and the variant. The
    plain name is production's; a canary is listed by ``name:version``."""
    cards = []
    for engine in rollout.engines:
        loaded = engine.loaded
        if loaded is None:
            continue
        created = int(loaded.manifest.created_at.timestamp())
        served = {"alias": engine.alias, "version": loaded.version, "variant": loaded.variant}
        ids = [f"{loaded.name}:{loaded.version}"] if engine is rollout.canary else [
            loaded.name, f"{loaded.name}:{loaded.version}"]
        cards += [{"id": model_id, "object": "model", "created": created, "owned_by": "llmops", **served}
                  for model_id in ids]
    return cards


def _capture(app: FastAPI, flight: Flight, trace: dict[str, Optional[str]]) -> None:
    """One traffic record per prompt, spooled before the response is sent (before ``[DONE]`` when streamed). A full
    spool (the store has been unreachable) is a 503: no response goes out uncaptured; any other failure here (a
    record outside the contract included) is logged, never the user's problem. Scoring requests (``max_tokens=0``)
    generate nothing to monitor and are not captured."""
    buffer: TrafficBuffer = app.state.buffer
    if buffer is None or flight.request.sampling.max_new_tokens == 0:
        return
    groups = flight.per_prompt()
    latency_ms = (time.monotonic() - flight.started) * 1000
    try:
        records: list[TrafficRecord] = [
            traffic_record(
                prompt=group[0].prompt_text, score=group[0].prompt_score(), completions=[j.completion() for j in group],
                params=flight.request.sampling, n=flight.request.n, latency_ms=latency_ms, model=app.state.model_name,
                version=group[0].version, variant=group[0].variant, ts=flight.received,
                request_id=flight.response_id if len(groups) == 1 else f"{flight.response_id}-{i}", **trace,
            )
            for i, group in enumerate(groups)
        ]
        if buffer.add(records) >= app.state.cfg.flush_every and app.state.flush_wanted is not None:
            app.state.flush_wanted.set()
    except CaptureFull as exc:
        app.state.metrics.rejected.labels("capture_full").inc()
        raise ApiError(503, f"{exc}; retry later", type="service_unavailable", code="capture_full") from None
    except Exception:
        log.exception("capturing request %s failed", flight.response_id)


def _admit(app: FastAPI) -> Callable[[], None]:
    """Admit a completion request, or answer 429 with Retry-After when ``serve.max_queue`` are already in.

    Returns the release, which counts the request out once however often it is called."""
    cfg: ServeConfig = app.state.cfg
    if app.state.in_flight >= cfg.max_queue:
        app.state.metrics.rejected.labels("queue_full").inc()
        raise ApiError(429, f"{app.state.in_flight} requests are already admitted (serve.max_queue); retry after "
                       f"{cfg.retry_after_s} s", type="rate_limit_error", code="queue_full",
                       headers={"Retry-After": str(cfg.retry_after_s)})
    app.state.in_flight += 1  # the event loop's thread only: no lock needed
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            app.state.in_flight -= 1

    return release


async def _streamed(app: FastAPI, flight: Flight, trace: dict[str, Optional[str]],
                    release: Callable[[], None]) -> AsyncIterator[bytes]:
    """The SSE body; a client that goes away cancels the stream's task, and with it the request's rows."""
    try:
        async for chunk in flight.events(app.state.engine.registry.name, lambda: _capture(app, flight, trace)):
            yield chunk
        if flight.done:
            app.state.rollout.count(flight.version, flight.error is None)
        if flight.done and flight.error is None:
            _finished(app, flight)
    finally:
        flight.cancel()
        release()


async def _answer(app: FastAPI, parsed: ParsedRequest, http: Request, user: Optional[str], chat: bool,
                  pinned: Optional[Engine] = None) -> Response:
    """Answer from the engine the request pinned (the canary by ``name:version``) or the rollout routes it to; in
    shadow mode the canary answers a copy."""
    rollout: Rollout = app.state.rollout
    engine = pinned or rollout.route(user)
    trace = {"x_request_id": http.state.request_id, "user": user}
    release = _admit(app)
    try:
        flight = Flight.launch(parsed, engine.submit, timeout_s=app.state.cfg.request_timeout_s,
                               capture=app.state.buffer is not None, chat=chat)
        _shadowed(app, parsed, flight.response_id, trace)
        if parsed.stream:
            return StreamingResponse(_streamed(app, flight, trace, release), media_type="text/event-stream")
        await flight.wait(http)
    except BaseException:
        release()
        raise
    release()
    rollout.count(flight.version, flight.error is None)
    flight.raise_error()
    _capture(app, flight, trace)
    _finished(app, flight)
    return JSONResponse(flight.body(engine.registry.name))


def _shadowed(app: FastAPI, parsed: ParsedRequest, response_id: str, trace: dict[str, Optional[str]]) -> None:
    """In shadow mode, the canary answers a copy in the background: counted and captured (``<id>-shadow``), never
    returned. A full canary queue skips the copy rather than delay anyone."""
    canary = app.state.rollout.shadow()
    if canary is None or canary.scheduler is None or canary.scheduler.queued >= app.state.cfg.max_queue:
        return

    async def run() -> None:
        try:
            flight = Flight.launch(replace(parsed, stream=False), canary.submit, capture=app.state.buffer is not None,
                                   timeout_s=app.state.cfg.request_timeout_s, response_id=f"{response_id}-shadow")
            await flight.wait(None)
            app.state.rollout.count(flight.version, flight.error is None)
            if flight.error is None:
                _capture(app, flight, trace)
        except Exception:  # the canary went away meanwhile, or its capture failed: never the user's problem
            log.exception("the shadow copy of %s failed", response_id)

    task = asyncio.create_task(run(), name=f"llmops-shadow-{response_id}")
    app.state.shadows.add(task)  # a reference until it is done: the loop keeps only weak ones
    task.add_done_callback(app.state.shadows.discard)


def _finished(app: FastAPI, flight: Flight) -> None:
    """Count a finished request in the metrics and the /health stats."""
    metrics: ServerMetrics = app.state.metrics
    usage = flight.usage()
    metrics.prompt_tokens.inc(usage["prompt_tokens"])
    metrics.completion_tokens.inc(usage["completion_tokens"])
    metrics.generation_seconds.inc(time.monotonic() - flight.started)
    firsts = [j.first_token_at for j in flight.jobs if j.first_token_at is not None]
    if firsts:
        metrics.ttft.observe(min(firsts) - flight.started)
    app.state.engine.count(flight.per_prompt())


def _refresh_gauges(app: FastAPI, metrics: ServerMetrics) -> None:
    """The gauges that mirror state: admitted requests, what is served, the capture backlog."""
    metrics.in_flight.set(app.state.in_flight)
    schedulers = [e.scheduler for e in app.state.rollout.engines if e.scheduler is not None]
    metrics.queued.set(sum(s.queued for s in schedulers))
    metrics.running.set(sum(s.running for s in schedulers))
    metrics.served.clear()
    for engine in app.state.rollout.engines:
        if engine.loaded is not None:
            metrics.served.labels(str(engine.loaded.version), engine.loaded.variant).set(1)
    if app.state.buffer is not None:
        stats = app.state.buffer.stats()
        metrics.capture_backlog.set(stats["buffered"])
        metrics.capture_spool.set(stats["spooled_bytes"])


def _add_routes(app: FastAPI) -> None:
    engine: Engine = app.state.engine

    @app.get("/health")
    async def health() -> JSONResponse:
        return _health(app)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": _model_cards(app.state.rollout)}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict:
        for card in _model_cards(app.state.rollout):
            if card["id"] == model_id:
                return card
        raise ApiError(404, f"The model {model_id!r} does not exist or is not served here", param="model",
                       code="model_not_found")

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, http: Request) -> Response:
        pinned = app.state.rollout.pinned(request.model)
        parsed = parse_completion(request, app.state.cfg, (pinned or engine).served())
        return await _answer(app, parsed, http, request.user, chat=False, pinned=pinned)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest, http: Request) -> Response:
        pinned = app.state.rollout.pinned(request.model)
        served, loaded = (pinned or engine).served(), (pinned or engine).loaded
        prompt = chat_prompt(request, loaded.tokenizer)
        parsed = parse_completion(as_completion(request, prompt), app.state.cfg, served)
        return await _answer(app, parsed, http, request.user, chat=True, pinned=pinned)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(app.state.metrics.render(lambda m: _refresh_gauges(app, m)), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def reload() -> dict:
        try:
            old, new = await anyio.to_thread.run_sync(app.state.rollout.reload, True)
        except ReloadError as exc:
            raise ApiError(503, str(exc), type="service_unavailable", code="reload_failed") from None
        return {"old_version": old, "new_version": new, "changed": old != new}

    @app.post("/admin/flush")
    async def flush() -> dict:
        buffer: Optional[TrafficBuffer] = app.state.buffer
        if buffer is None:
            return {"written": 0, "buffered": 0, "capture": False}
        try:
            written = await anyio.to_thread.run_sync(buffer.flush)
            await anyio.to_thread.run_sync(app.state.rollout.write, app.state.store, app.state.model_name)
        except Exception as exc:
            log.exception("flush requested through /admin/flush failed")
            raise ApiError(503, f"writing the traffic log failed: {exc}; {len(buffer)} records stay buffered",
                           type="service_unavailable", code="flush_failed") from None
        return {"written": written, "buffered": len(buffer), "capture": True}
