"""Running the app: uvicorn in a background thread (``start_server``, for the main job and tests) or in the
foreground (``llmops serve``)."""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from llmops.infra.config import ServeConfig
from llmops.infra.settings import api_keys, get_settings
from llmops.infra.store import ArtifactStore
from llmops.models.serving.app import create_app
from llmops.models.serving.guard import check_bind
from llmops.models.serving.logs import log_config

log = logging.getLogger("llmops.serving")


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
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_config=log_config(cfg.log_format), access_log=False)
