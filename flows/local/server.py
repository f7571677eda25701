"""Child processes the CLI starts for the user: a local Prefect server (SQLite, or PostgreSQL) and a deployment
runner."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def quiet_prefect_env(home: Optional[Path] = None) -> dict[str, str]:
    """Environment for a Prefect child process: no telemetry, llmops loggers in the run logs."""
    env = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "llmops",
        # llmops loggers also run outside flows (the CLI, the model server): no warning for each line
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    return env


class ChildProcess:
    """A child process whose output goes to a log file, stopped politely and then firmly."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]):
        self.args, self.log_path = args, log_path
        self.env = {**os.environ, **env}
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the child's process group, then SIGKILL to what is left of it after ``timeout``.

        The group holds what the child started (a runner's flow-run subprocesses, whatever a server spawns): the
        stop waits for all of it, not only for the child, so nothing outlives it. A second Ctrl-C or SIGTERM during
        the wait (a KeyboardInterrupt) skips to SIGKILL.
        """
        if self.proc is None or self._log.closed:
            return
        try:
            self._signal(signal.SIGTERM)
            if not self._wait_group(timeout):
                self._signal(signal.SIGKILL)
                self._wait_group(5.0)
        except KeyboardInterrupt:
            self._signal(signal.SIGKILL)
            self.proc.wait()
        finally:
            self._log.close()

    def _signal(self, sig: int) -> None:
        try:  # the child leads its own session (start_new_session), so its group holds only what it started
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _wait_group(self, timeout: float) -> bool:
        """Wait until the child and every process of its group have exited; False if some are left at ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None or self._group_alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _group_alive(self) -> bool:
        try:  # as PID 1 of a container we inherit the group's orphans: reap those that exited (zombies count as alive)
            while os.waitpid(-self.proc.pid, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True


class LocalPrefectServer(ChildProcess):
    """``prefect server start`` on loopback with its own PREFECT_HOME (UI included).

    Its database is SQLite in PREFECT_HOME unless ``PREFECT_API_DATABASE_CONNECTION_URL``
    (``postgresql+asyncpg://user:password@host:5432/db``), from our environment or ``env``, names a PostgreSQL
    database: the server creates or migrates its tables there at start-up. The user's own Prefect profile is not
    read (PREFECT_HOME is ours), so the environment is the way to point ``llmops up`` at a database.
    """

    def __init__(self, home: Path, host: str = "127.0.0.1", port: Optional[int] = None,
                 env: Optional[dict[str, str]] = None):
        """``env``: more server settings, e.g. ``PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS``."""
        self.host, self.port, self.home = host, port or free_port(host), home
        # `--port` does not reach the UI: it calls PREFECT_API_URL, else PREFECT_SERVER_API_PORT (4200), so on any
        # other port (or with a PREFECT_API_URL exported for another server) its pages could not load a thing
        ui = {} if {"PREFECT_UI_API_URL", "PREFECT_SERVER_UI_API_URL"} & os.environ.keys() else \
            {"PREFECT_UI_API_URL": self.api_url}
        super().__init__(
            [sys.executable, "-m", "prefect", "server", "start", "--host", self.host, "--port", str(self.port)],
            home / "server.log",
            {**quiet_prefect_env(home), **ui, **(env or {})},
        )

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def wait_healthy(self, timeout: float = 120.0) -> LocalPrefectServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"the Prefect server exited during start-up; its log ({self.log_path}) ends:\n"
                                   f"{self.tail()}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Prefect server did not answer within {timeout:.0f} s; log: {self.log_path}\n"
                           f"{self.tail()}")


def deployment_runner(config_path: Path, api_url: str, log_path: Path, home: Optional[Path] = None,
                      env: Optional[dict[str, str]] = None) -> ChildProcess:
    """``llmops deploy --config FILE`` against ``api_url``: registers the deployments and runs their flows.

    ``env``: more settings for the runner, e.g. ``PREFECT_RUNNER_POLL_FREQUENCY``.
    """
    env = {**quiet_prefect_env(home), "PREFECT_API_URL": api_url, **(env or {})}
    return ChildProcess([sys.executable, "-m", "llmops.flows.cli", "deploy", "--config", str(config_path)],
                        log_path, env)
