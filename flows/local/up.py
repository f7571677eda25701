"""``llmops up``: a local Prefect server (SQLite, UI) plus the served deployments, until Ctrl-C or SIGTERM."""
from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from llmops.flows.local.server import LocalPrefectServer, deployment_runner
from llmops.flows.local.shutdown import sigterm_as_interrupt
from llmops.infra.config import PipelineConfig
from llmops.infra.settings import get_settings


def run_up(config: PipelineConfig, host: str = "127.0.0.1", port: int = 4200) -> int:
    """Start the server in ``<cache>/prefect`` and ``llmops deploy`` against it; print where the UI is.

    The runner reads ``config`` as written to ``<cache>/prefect/up-config.yaml``: the file ``--config`` named with
    every ``--set`` applied.

    Ctrl-C or SIGTERM, at any time, stops the runner and then the server (each with its process group), and
    returns 0; 1 if one of them exited by itself.
    """
    home = Path(get_settings().cache_dir).resolve() / "prefect"
    try:
        # the runner is stopped first (the stack unwinds in reverse): it still reaches the server while it stops
        with sigterm_as_interrupt(), ExitStack() as stack:
            server = LocalPrefectServer(home, host=host, port=port).start()
            stack.callback(server.stop)
            server.wait_healthy()
            config_path = home / "up-config.yaml"
            config_path.write_text(config.to_yaml())
            runner = deployment_runner(config_path, server.api_url, home / "deployments.log", home).start()
            stack.callback(runner.stop)
            print(f"Prefect UI:  {server.ui_url}\n"
                  f"Prefect API: {server.api_url}  (export PREFECT_API_URL={server.api_url})\n"
                  f"deployments: training-pipeline/train, monitor-drift/monitor, retrain/retrain "
                  f"(log: {runner.log_path})\n"
                  "Ctrl-C (or SIGTERM) stops both.", flush=True)
            while server.running() and runner.running():
                time.sleep(2)
            failed = server if not server.running() else runner
            print(f"{' '.join(failed.args[1:5])} exited; its log ({failed.log_path}) ends:\n{failed.tail()}")
            return 1
    except KeyboardInterrupt:
        print("llmops up: stopped", flush=True)
        return 0
