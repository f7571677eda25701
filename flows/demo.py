"""The main job (``llmops run``): the whole loop on one machine, from an empty store to a drift-triggered retrain."""
from __future__ import annotations

import random
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from typing import Optional

import httpx
from prefect.settings import PREFECT_API_URL, temporary_settings
from rich.console import Console

from llmops.flows.local.server import ChildProcess, LocalPrefectServer, deployment_runner
from llmops.flows.monitor_drift import monitor_drift
from llmops.flows.training_pipeline import training_pipeline
from llmops.flows.triggered import latest_gate, wait_for_final, wait_for_triggered_run
from llmops.infra.config import PipelineConfig
from llmops.models.data import read_split, stdlib_code
from llmops.models.records import PipelineReport
from llmops.models.serving import ServerHandle, start_server
from llmops.monitoring.records import DriftOutcome
from llmops.tasks.core.context import cache_dir, store

console = Console(soft_wrap=True)
TRAFFIC_PER_PHASE = 150
# the drifted phase sends more: the warm start holds out monitor.min_samples prompts (the gate's new slice and v2's
# reference profile) and trains on the rest
DRIFT_TRAFFIC = 300


def send_traffic(base_url: str, model: str, prompts: list[str], max_tokens: int,
                 api_key: Optional[str] = None) -> tuple[datetime, datetime]:
    """Send each prompt through the official OpenAI client; return the window that covers them."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key or "not-needed", max_retries=2)
    start = datetime.now(timezone.utc)
    for i, prompt in enumerate(prompts, 1):
        client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens)
        if i % 50 == 0:
            console.print(f"  {i}/{len(prompts)} requests")
    return start, datetime.now(timezone.utc)


def _sample(texts: list[str], k: int, limit: int, seed: int) -> list[str]:
    usable = [t for t in texts if len(t) <= limit]
    return random.Random(seed).sample(usable, min(k, len(usable)))


def _admin(handle: ServerHandle) -> dict[str, str]:
    return {"Authorization": f"Bearer {handle.admin_key}"}


def _split_pool(texts: list[str], first: int, limit: int, seed: int) -> tuple[list[str], list[str]]:
    """Two disjoint lists of servable texts: ``first`` of them, and the rest (fresh traffic for a later phase)."""
    usable = list(dict.fromkeys(t for t in texts if len(t) <= limit))
    random.Random(seed).shuffle(usable)
    return usable[:first], usable[first:]


class Demo:
    """The eight steps of the main job, sharing what they started (closed by ``stack`` at the end)."""

    def __init__(self, config: PipelineConfig, stack: ExitStack):
        self.config, self.stack = config, stack
        self.store, self.cache = store(), cache_dir()
        self.retrained: Optional[int] = None

    def step(self, title: str) -> None:
        console.rule(f"[bold]{title}")

    def start_prefect(self) -> ChildProcess:
        """A local Prefect server (unless PREFECT_API_URL names one) and the runner serving the deployments."""
        self.step("1/8 Prefect: a local server and the deployments (schedule + drift trigger)")
        api_url = PREFECT_API_URL.value()
        if not api_url:
            server = LocalPrefectServer(self.cache / "prefect").start()
            self.stack.callback(server.stop)
            api_url = server.wait_healthy().api_url
            console.print(f"Prefect UI: {server.ui_url}  (log: {server.log_path})")
        self.stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
        config_path = self.cache / "run-config.yaml"
        config_path.write_text(self.config.to_yaml())
        runner = deployment_runner(config_path, api_url, self.cache / "prefect" / "deployments.log",
                                   self.cache / "prefect").start()
        self.stack.callback(runner.stop)
        return runner

    def train_first(self) -> PipelineReport:
        self.step("2/8 Train, evaluate, compress, register and promote the first model")
        first = training_pipeline(self.config)
        console.print(f"v{first.version.version}: {first.evaluation.gate.reason}")
        if first.compression is not None:
            for v in first.compression.variants:
                console.print(f"  {v.variant}: {'servable' if v.servable else 'not served: ' + '; '.join(v.reasons)}")
            console.print(f"  the server's serve.variant=auto serves {first.compression.serve}")
        return first

    def serve(self) -> ServerHandle:
        self.step("3/8 Serve the production model (OpenAI-compatible) on loopback")
        handle = start_server(self.store, self.config.model_name, self.config.serve.model_copy(update={"port": 0}),
                              self.cache)
        self.stack.callback(handle.stop)
        console.print(f"serving {self.config.model_name} at {handle.url}/v1/completions")
        return handle

    def traffic_phase(self, handle: ServerHandle, title: str, prompts: list[str]) -> DriftOutcome:
        """Send ``prompts`` through the server, flush its capture, and run the monitor flow on that window."""
        self.step(title)
        start, end = send_traffic(handle.url, self.config.model_name, prompts, self.config.serve.default_max_tokens,
                                  handle.admin_key if handle.app.state.keys.required else None)
        httpx.post(f"{handle.url}/admin/flush", headers=_admin(handle), timeout=60)
        outcome = monitor_drift(self.config, start=start, end=end)
        signals = ", ".join(outcome.alerting_signals) or "no signal"
        console.print(f"verdict: [bold]{outcome.verdict}[/] ({signals}; event: {outcome.event_reason}) "
                      f"— report: {outcome.report_html}")
        return outcome

    def follow_retrain(self, first: PipelineReport, handle: ServerHandle, since: datetime,
                       runner: ChildProcess) -> bool:
        """The retrain the drift event triggered, to its gate decision; the server reloads production."""
        run = wait_for_triggered_run("retrain", since=since, timeout=120)
        console.print(f"triggered flow run {run.name!r} ({run.id}); waiting for it to finish...")
        final = wait_for_final(run.id, timeout=900)
        console.print(f"retrain finished: {final.state_name}")
        gate = latest_gate(self.store, self.config.model_name, after_version=first.version.version)
        if gate is None:
            console.print(f"[red]the retrain registered no new version; see {runner.log_path}")
            return False
        self.retrained = gate.candidate_version
        console.print(f"gate decision for v{gate.candidate_version}: "
                      f"[bold]{'promoted' if gate.promote else 'not promoted'}[/] — {gate.reason}")
        for s in gate.slices:
            console.print(f"  {s.name}: v{gate.candidate_version} {s.candidate_bits_per_byte:.4f} vs "
                          f"v{gate.production_version} {s.production_bits_per_byte:.4f} bits/byte, difference "
                          f"{s.difference:+.4f}, 95% CI [{s.ci_low:+.4f}, {s.ci_high:+.4f}] "
                          f"({'must improve' if s.rule == 'improve' else 'no regression'}: "
                          f"{'passes' if s.passed else 'fails'})")
        reloaded = httpx.post(f"{handle.url}/admin/reload", headers=_admin(handle), timeout=120).json()
        console.print(f"server reloaded the production alias: v{reloaded['old_version']} -> v{reloaded['new_version']}"
                      if reloaded["changed"] else f"server serves v{reloaded['new_version']} (its alias poll had "
                      "already swapped it in)")
        return True

    def where_to_look(self, first: PipelineReport, reports: list[DriftOutcome], trend_uri: str) -> None:
        self.step("8/8 Where to look")
        second = first.model_card_uri.replace(f"/versions/{first.version.version}/", f"/versions/{self.retrained}/")
        console.print(f"model cards:   {first.model_card_uri}\n               {second}\n"
                      f"loss curve:    {first.run.loss_plot_uri}\n"
                      f"drift reports: {reports[0].report_html}\n"
                      + "".join(f"               {r.report_html}\n" for r in reports[1:]) +
                      f"drift trend:   {trend_uri}\nstore:         {self.store.uri}")


def run_demo(config: PipelineConfig, keep_running: bool = False) -> int:
    """Train and deploy, serve, show quiet monitoring on familiar traffic, then an alert and its retrain."""
    with ExitStack() as stack:
        demo = Demo(config, stack)
        runner = demo.start_prefect()
        first = demo.train_first()
        handle = demo.serve()
        limit = config.serve.max_prompt_chars
        quiet = demo.traffic_phase(handle, "4/8 Traffic like the training data: monitoring should stay quiet",
                                   _sample(read_split(demo.store, first.dataset, "test"), TRAFFIC_PER_PHASE, limit, 1))
        code, fresh_code = _split_pool([d.text for d in stdlib_code(max_bytes=2_000_000)], DRIFT_TRAFFIC, limit, 2)
        alert = demo.traffic_phase(handle, "5/8 Traffic of a different kind (Python source code): monitoring should "
                                   "alert", code)
        demo.step("6/8 The drift event starts the retrain deployment (Prefect trigger): a warm start on that traffic")
        if not alert.event_emitted:
            console.print("[red]no drift event was emitted, so no retrain was triggered")
            return 1
        # the same window again: one drift, one retrain (the cooldown holds the second alert)
        again = monitor_drift(config, start=alert.start, end=alert.end)
        console.print(f"the same window checked again: {again.verdict}, event "
                      f"{'emitted' if again.event_emitted else 'held'} ({again.event_reason}): one drift, one retrain")
        if not demo.follow_retrain(first, handle, since=alert.end, runner=runner):
            return 1
        after = demo.traffic_phase(handle, "7/8 Fresh Python code, served by the production model now: monitoring "
                                   "should stay quiet if the retrain was promoted", fresh_code[:TRAFFIC_PER_PHASE])
        demo.where_to_look(first, [quiet, alert, after], after.trend_uri)
        if keep_running:
            console.print("servers stay up; Ctrl-C or SIGTERM stops them")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:  # the normal end of --keep-running: the exit stack stops every server
                console.print("stopping")
    return 0
