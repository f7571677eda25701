"""The serving app: an OpenAI-compatible FastAPI app over the registry's aliased model, with traffic capture and
hot reload."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import anyio
import anyio.to_thread
import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

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
    completion_body,
    install_error_handlers,
    parse_completion,
)
from llmops.models.serving.capture import CaptureFull, TrafficBuffer
from llmops.models.serving.engine import Engine, Generation, ReloadError
from llmops.models.serving.guard import Guard, Keys, check_bind
from llmops.models.serving.metrics import CONTENT_TYPE_LATEST, ServerMetrics

log = logging.getLogger("llmops.serving")

# Generation is serialised by the engine's lock; a few threads keep it busy, while requests beyond
# them wait without holding a thread that flushes and reloads also need.
GENERATION_THREADS = 4


def create_app(store: ArtifactStore, model_name: str, cfg: ServeConfig, cache_dir: Path,
               keys: Optional[list[str]] = None) -> FastAPI:
    """The app serving ``model_name`` at alias ``cfg.alias`` in variant ``cfg.variant``.

    The model is loaded here; without one (no alias yet, a load error) the app still starts and
    answers 503 saying what is missing until a reload finds a model. ``keys`` (default: ``LLMOPS_API_KEY`` and
    ``LLMOPS_API_KEY_FILE``) are required on every route but /health; without any, only /admin/* needs one:
    the process's own admin key (``app.state.keys.admin``).
    """
    engine = Engine(Registry(store, model_name), cfg, Path(cache_dir))
    try:
        engine.reload()
    except ReloadError as exc:
        log.error("starting without a model: %s", exc)
    app = FastAPI(title=f"llmops: {model_name}", lifespan=_lifespan)
    app.state.engine = engine
    app.state.cfg = cfg
    # per store and model: what was spooled for one store is never shipped to another
    spool = Path(cache_dir) / "spool" / hashlib.sha256(store.uri.encode()).hexdigest()[:12] / model_name
    app.state.buffer = (TrafficBuffer(store, model_name, cfg.capture_buffer_limit, spool,
                                      int(cfg.capture_spool_mb * 2**20)) if cfg.capture else None)
    app.state.flush_wanted = None  # an asyncio.Event, created in the server's loop by _lifespan
    app.state.generation_threads = None  # an anyio.CapacityLimiter, likewise
    app.state.keys = Keys(api_keys(get_settings()) if keys is None else keys)
    app.state.metrics = ServerMetrics()
    app.state.in_flight = 0
    app.add_middleware(Guard, keys=app.state.keys, max_body_bytes=cfg.max_body_bytes, metrics=app.state.metrics)
    install_error_handlers(app)
    _add_routes(app)
    return app


# -- background work ----------------------------------------------------------------------------
@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    cfg, buffer = app.state.cfg, app.state.buffer
    app.state.flush_wanted = asyncio.Event()
    app.state.generation_threads = anyio.CapacityLimiter(GENERATION_THREADS)
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
        if buffer is not None:
            await anyio.to_thread.run_sync(_flush_logged, buffer)
            buffer.close()


def _flush_logged(buffer: TrafficBuffer) -> bool:
    """Flush; a store failure is logged, never raised (the records stay buffered). Return success."""
    try:
        buffer.flush()
        return True
    except Exception:
        log.exception("writing %d traffic records failed; kept for the next flush", len(buffer))
        return False


async def _flush_loop(app: FastAPI) -> None:
    """Flush every ``flush_interval_s``, or sooner once ``flush_every`` records wait."""
    cfg, buffer, wanted = app.state.cfg, app.state.buffer, app.state.flush_wanted
    while True:
        try:
            await asyncio.wait_for(wanted.wait(), timeout=cfg.flush_interval_s)
        except asyncio.TimeoutError:
            pass
        wanted.clear()
        if len(buffer) and not await anyio.to_thread.run_sync(_flush_logged, buffer):
            await asyncio.sleep(cfg.flush_interval_s)  # back off: do not retry on every request


async def _reload_loop(app: FastAPI) -> None:
    """Swap in a newly promoted version when the alias moves."""
    engine: Engine = app.state.engine
    while True:
        await asyncio.sleep(app.state.cfg.reload_interval_s)
        try:
            await anyio.to_thread.run_sync(engine.reload)
        except ReloadError as exc:
            log.warning("alias check: %s", exc)


# -- routes ---------------------------------------------------------------------------------------
def _health(app: FastAPI) -> JSONResponse:
    engine: Engine = app.state.engine
    cfg: ServeConfig = app.state.cfg
    loaded = engine.loaded
    body = {"status": "ok" if loaded else "unavailable", "model": engine.registry.name,
            "version": loaded.version if loaded else None, "variant": cfg.variant, "alias": cfg.alias}
    if loaded is None:
        body["reason"] = engine.unavailable
    body["stats"] = dict(engine.stats)
    if app.state.buffer is not None:
        body["capture"] = app.state.buffer.stats()
    return JSONResponse(body, status_code=200 if loaded else 503)


def _model_cards(engine: Engine) -> list[dict]:
    """OpenAI's model objects, plus what is served behind each id: the alias, the version and the variant."""
    loaded = engine.loaded
    if loaded is None:
        return []
    created = int(loaded.manifest.created_at.timestamp())
    served = {"alias": engine.cfg.alias, "version": loaded.version, "variant": loaded.variant}
    return [{"id": model_id, "object": "model", "created": created, "owned_by": "llmops", **served}
            for model_id in (loaded.name, f"{loaded.name}:{loaded.version}")]


def _capture(app: FastAPI, response_id: str, received: datetime, request: ParsedRequest, gen: Generation,
             trace: dict[str, Optional[str]]) -> None:
    """One traffic record per prompt, spooled before the response is sent. A full spool (the store has been
    unreachable) is a 503: no response goes out uncaptured; any other failure here (a record outside the contract
    included) is logged, never the user's problem."""
    buffer: TrafficBuffer = app.state.buffer
    try:
        records: list[TrafficRecord] = [
            traffic_record(
                prompt=prompt, score=gen.scores[i], completions=gen.results[i], params=request.sampling,
                n=request.n, latency_ms=gen.latency_ms, model=gen.served.name, version=gen.served.version,
                variant=gen.variant, request_id=response_id if len(request.prompts) == 1 else f"{response_id}-{i}",
                ts=received, **trace,
            )
            for i, prompt in enumerate(request.prompts)
        ]
        if buffer.add(records) >= app.state.cfg.flush_every and app.state.flush_wanted is not None:
            app.state.flush_wanted.set()
    except CaptureFull as exc:
        app.state.metrics.rejected.labels("capture_full").inc()
        raise ApiError(503, f"{exc}; retry later", type="service_unavailable", code="capture_full") from None
    except Exception:
        log.exception("capturing request %s failed", response_id)


@contextmanager
def _admitted(app: FastAPI) -> Iterator[None]:
    """Admit a completion request, or answer 429 with Retry-After when ``serve.max_queue`` are already in."""
    cfg: ServeConfig = app.state.cfg
    if app.state.in_flight >= cfg.max_queue:
        app.state.metrics.rejected.labels("queue_full").inc()
        raise ApiError(429, f"{app.state.in_flight} requests are already admitted (serve.max_queue); retry after "
                       f"{cfg.retry_after_s} s", type="rate_limit_error", code="queue_full",
                       headers={"Retry-After": str(cfg.retry_after_s)})
    app.state.in_flight += 1  # the event loop's thread only: no lock needed
    try:
        yield
    finally:
        app.state.in_flight -= 1


def _count_tokens(metrics: ServerMetrics, gen: Generation) -> None:
    metrics.prompt_tokens.inc(sum(gen.prompt_tokens))
    metrics.completion_tokens.inc(sum(c.tokens for per_prompt in gen.results for c in per_prompt))
    metrics.generation_seconds.inc(gen.latency_ms / 1000)


def _refresh_gauges(app: FastAPI, metrics: ServerMetrics) -> None:
    """The gauges that mirror state: admitted requests, what is served, the capture backlog."""
    metrics.in_flight.set(app.state.in_flight)
    loaded = app.state.engine.loaded
    metrics.served.clear()
    if loaded is not None:
        metrics.served.labels(str(loaded.version), loaded.variant).set(1)
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
        return {"object": "list", "data": _model_cards(engine)}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict:
        for card in _model_cards(engine):
            if card["id"] == model_id:
                return card
        raise ApiError(404, f"The model {model_id!r} does not exist or is not served here", param="model",
                       code="model_not_found")

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, http: Request) -> dict:
        received = datetime.now(timezone.utc)
        parsed = parse_completion(request, app.state.cfg, engine.served())
        capture = app.state.buffer is not None
        with _admitted(app):
            gen = await anyio.to_thread.run_sync(engine.generate, parsed, capture,
                                                 limiter=app.state.generation_threads)
        response_id = f"cmpl-{uuid.uuid4().hex}"
        if capture:
            _capture(app, response_id, received, parsed, gen,
                     {"x_request_id": http.state.request_id, "user": request.user})
        _count_tokens(app.state.metrics, gen)
        model_id = f"{gen.served.name}:{gen.served.version}"
        return completion_body(response_id, model_id, gen.results, gen.prompt_tokens)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(app.state.metrics.render(lambda m: _refresh_gauges(app, m)), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def reload() -> dict:
        try:
            old, new = await anyio.to_thread.run_sync(engine.reload, True)
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
        except Exception as exc:
            log.exception("flush requested through /admin/flush failed")
            raise ApiError(503, f"writing the traffic log failed: {exc}; {len(buffer)} records stay buffered",
                           type="service_unavailable", code="flush_failed") from None
        return {"written": written, "buffered": len(buffer), "capture": True}


# -- running --------------------------------------------------------------------------------------
@dataclass
class ServerHandle:
    """A uvicorn server running the app in a background thread."""

    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def admin_key(self) -> str:
        """A key /admin/* accepts: the first configured API key, or the one this process minted."""
        return self.app.state.keys.admin

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop gracefully: in-flight requests finish, then the traffic buffer is flushed."""
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            log.warning("server on port %d did not stop within %.0f s", self.port, timeout_s)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound before uvicorn starts, so port 0 yields a known free port without a race."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _wait_until_answering(handle: ServerHandle, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not handle.thread.is_alive():
            raise RuntimeError(f"the server on port {handle.port} exited during startup (see the log)")
        try:
            if httpx.get(f"{handle.url}/health", timeout=2.0).status_code in (200, 503):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    handle.stop(timeout_s=5)
    raise TimeoutError(f"the server on port {handle.port} did not answer /health within {timeout_s:.0f} s")


def start_server(store: ArtifactStore, model_name: str, cfg: ServeConfig, cache_dir: Path, *,
                 log_level: str = "warning", startup_timeout_s: float = 60.0) -> ServerHandle:
    """Run the app on ``cfg.host``/``cfg.port`` (0: a free port) in a background thread.

    Returns once ``/health`` answers (200 with a model, 503 without one).
    """
    keys = api_keys(get_settings())
    check_bind(cfg.host, keys, cfg.insecure)
    app = create_app(store, model_name, cfg, cache_dir, keys)
    sock = _bind(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=port, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"llmops-serve-{port}", daemon=True)
    thread.start()
    handle = ServerHandle(app, server, thread, cfg.host, port)
    _wait_until_answering(handle, startup_timeout_s)
    log.info("serving %s at %s", model_name, handle.url)
    return handle


def serve(store: ArtifactStore, model_name: str, cfg: ServeConfig, cache_dir: Path) -> None:
    """Serve in the foreground until interrupted (``llmops serve``); the traffic buffer is flushed on exit.

    Without a configured API key the admin routes take the key this process minted, which is not shown: reloads
    happen by the alias poll (``serve.reload_interval_s``) and captures ship by themselves.
    """
    keys = api_keys(get_settings())
    check_bind(cfg.host, keys, cfg.insecure)
    app = create_app(store, model_name, cfg, cache_dir, keys)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
