"""The main job (``llmops run``): the whole loop on one machine, from an empty store to a drift-triggered retrain."""
from __future__ import annotations

import random
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from llmops.flows.local.server import LocalPrefectServer, deployment_runner
from llmops.infra.config import PipelineConfig
from llmops.infra.settings import get_settings
from llmops.infra.store import open_store

console = Console(soft_wrap=True)
TRAFFIC_PER_PHASE = 150


def _step(title: str) -> None:
    console.rule(f"[bold]{title}")


def send_traffic(base_url: str, model: str, prompts: list[str], max_tokens: int) -> tuple[datetime, datetime]:
    """Send each prompt through the official OpenAI client; return the window that covers them."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=2)
    start = datetime.now(timezone.utc)
    for i, prompt in enumerate(prompts, 1):
        client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens)
        if i % 50 == 0:
            console.print(f"  {i}/{len(prompts)} requests")
    return start, datetime.now(timezone.utc)


def _sample(texts: list[str], k: int, limit: int, seed: int) -> list[str]:
    usable = [t for t in texts if len(t) <= limit]
    return random.Random(seed).sample(usable, min(k, len(usable)))


def run_demo(config: PipelineConfig, keep_running: bool = False) -> int:
    """Train and deploy, serve, show quiet monitoring on familiar traffic, then an alert and its retrain."""
    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from llmops.flows.monitor_drift import monitor_drift
    from llmops.flows.training_pipeline import training_pipeline
    from llmops.flows.triggered import latest_gate, wait_for_final, wait_for_triggered_run
    from llmops.models.data.corpus import stdlib_code
    from llmops.models.data.snapshot import read_split
    from llmops.models.serving.app import start_server

    settings = get_settings()
    store, cache = open_store(), Path(settings.cache_dir).resolve()
    with ExitStack() as stack:
        _step("1/7 Prefect: a local server and the deployments (schedule + drift trigger)")
        api_url = PREFECT_API_URL.value()
        if not api_url:
            server = LocalPrefectServer(cache / "prefect").start()
            stack.callback(server.stop)
            api_url = server.wait_healthy().api_url
            console.print(f"Prefect UI: {server.ui_url}  (log: {server.log_path})")
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
        config_path = cache / "run-config.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(config.to_yaml())
        runner = deployment_runner(config_path, api_url, cache / "prefect" / "deployments.log", cache / "prefect").start()
        stack.callback(runner.stop)

        _step("2/7 Train, evaluate, quantize, register and promote the first model")
        first = training_pipeline(config)
        console.print(f"v{first.version.version}: {first.evaluation.gate.reason}")

        _step("3/7 Serve the production model (OpenAI-compatible) on loopback")
        handle = start_server(store, config.model_name, config.serve.model_copy(update={"port": 0}), cache)
        stack.callback(handle.stop)
        console.print(f"serving {config.model_name} at {handle.url}/v1/completions")
        limit, max_tokens = config.serve.max_prompt_chars, config.serve.default_max_tokens

        _step("4/7 Traffic like the training data: monitoring should stay quiet")
        familiar = _sample(read_split(store, first.dataset, "test"), TRAFFIC_PER_PHASE, limit, seed=1)
        start, end = send_traffic(handle.url, config.model_name, familiar, max_tokens)
        httpx.post(f"{handle.url}/admin/flush", timeout=60)
        quiet = monitor_drift(config, start=start, end=end)
        console.print(f"verdict: [bold]{quiet.verdict}[/] — report: {quiet.report_html}")

        _step("5/7 Traffic of a different kind (Python source code): monitoring should alert")
        other = _sample([d.text for d in stdlib_code(max_bytes=2_000_000)], TRAFFIC_PER_PHASE, limit, seed=2)
        start, end = send_traffic(handle.url, config.model_name, other, max_tokens)
        httpx.post(f"{handle.url}/admin/flush", timeout=60)
        alert = monitor_drift(config, start=start, end=end)
        console.print(f"verdict: [bold]{alert.verdict}[/] ({', '.join(alert.alerting_signals) or 'no signal'}; "
                      f"event: {alert.event_reason}) "
                      f"— report: {alert.report_html}")

        _step("6/7 The drift event starts the retrain deployment (Prefect trigger)")
        if not alert.event_emitted:
            console.print("[red]no drift event was emitted, so no retrain was triggered")
            return 1
        again = monitor_drift(config, start=start, end=end)
        console.print(f"the same window checked again: {again.verdict}, event {'emitted' if again.event_emitted else 'held'} "
                      f"({again.event_reason}): one drift, one retrain")
        run = wait_for_triggered_run("retrain", since=end, timeout=120)
        console.print(f"triggered flow run {run.name!r} ({run.id}); waiting for it to finish...")
        final = wait_for_final(run.id, timeout=900)
        console.print(f"retrain finished: {final.state_name}")
        gate = latest_gate(store, config.model_name, after_version=first.version.version)
        if gate is None:
            console.print(f"[red]the retrain registered no new version; see {runner.log_path}")
            return 1
        console.print(f"gate decision for v{gate['version']}: "
                      f"[bold]{'promoted' if gate['promote'] else 'not promoted'}[/] — {gate['reason']}")
        reloaded = httpx.post(f"{handle.url}/admin/reload", timeout=120).json()
        console.print(f"server reloaded the production alias: v{reloaded['old_version']} -> v{reloaded['new_version']}")

        _step("7/7 Where to look")
        card = first.model_card_uri
        console.print(f"model card:    {card}\nloss curve:    {first.run.loss_plot_uri}\n"
                      f"drift reports: {quiet.report_html}\n               {alert.report_html}\n"
                      f"drift trend:   {again.trend_uri}\n"
                      f"store:         {store.uri}")
        if keep_running:
            console.print("servers stay up; Ctrl-C stops them")
            while True:
                time.sleep(3600)
    return 0
