"""The Prefect UI of ``llmops up``, driven in headless Chromium as a user drives it.

Real parts: ``llmops up`` as a subprocess (a Prefect server with its UI, the runner serving the deployments), the
training pipeline of a tiny model and the drift check, started from the UI's run form or through the API. The
tests open the address ``llmops up`` prints and follow the UI's own links from there (the server sends that address
to its default UI); the Prefect API only starts runs, waits for them and reads their parameters.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import yaml

from llmops.flows.local.server import free_port
from llmops.infra.config import DataConfig, PipelineConfig, TrainConfig
from llmops.tasks.core.context import artifact_key

pytestmark = pytest.mark.browser

ROOT = Path(__file__).parents[2]
T = TypeVar("T")
# A tiny model trained for a few seconds (as tests/e2e/test_scheduled_loop.py); monitor every 10 hours and retrain
# at 03:00 on Sundays, so that no scheduled run starts during the module.
OVERRIDES = [
    'data.sources=["builtin://stdlib-docstrings?max_bytes=200000"]', "data.val_fraction=0.2",
    "train.max_steps=20", "eval.max_docs=20", "compress.variants=[]", "monitor.reference_size=100",
    "monitor.evidently_report=false",
]
# given to `llmops up` as --set on top of --config: the schedules the Deployments page shows prove they reach the
# runner's deployments
SCHEDULE_SETS = ["schedule.monitor_every_minutes=600", "schedule.retrain_cron='0 3 * * 0'", "schedule.timezone=UTC"]
# what the UI writes for those two schedules (cronstrue's wording for the cron)
SCHEDULES = {"monitor": "Every 10 hours", "retrain": "At 03:00 AM, only on Sunday"}
FLOWS = {"train": "training-pipeline", "monitor": "monitor-drift", "retrain": "retrain"}
CHANGED_STEPS = 12  # the run form's one change: fewer steps than the deployment's 20, so a cheaper run
# a page on a busy 2-core box; the UI's first start there (8 MB of JavaScript to load and compile); a flow run,
# its process start-up included
PAGE_S, BOOT_S, RUN_S = 60, 120, 300


def poll(what: str, probe: Callable[[], T], timeout: float, every: float = 1.0) -> T:
    """``probe()`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@dataclass
class Up:
    """A running ``llmops up``: its process, the UI address it printed, its API, store and logs."""

    proc: subprocess.Popen
    folder: Path
    config: PipelineConfig
    api_url: str
    ui_url: str = ""

    @property
    def store(self) -> Path:
        return self.folder / "store"

    def log(self, lines: int = 40) -> str:
        """The ends of ``llmops up``'s output, the server's log and the runner's (where a flow run's traceback is)."""
        parts = []
        home = self.folder / "cache" / "prefect"
        for path in (self.folder / "up.log", home / "server.log", home / "deployments.log"):
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {path}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def api(self, method: str, path: str, **json_body) -> object:
        response = httpx.request(method, f"{self.api_url}{path}", json=json_body if method == "POST" else None,
                                 timeout=30)
        return response.raise_for_status().json()

    def deployments(self) -> dict[str, dict]:
        return {d["name"]: d for d in self.api("POST", "/deployments/filter")}

    def runs_of(self, deployment: str) -> list[dict]:
        """The deployment's flow runs, those its schedule created left out."""
        found = self.api("POST", "/flow_runs/filter",
                         deployments={"id": {"any_": [self.deployments()[deployment]["id"]]}})
        return sorted((r for r in found if not r["auto_scheduled"]), key=lambda r: r["created"])

    def wait_final(self, run_id: str) -> dict:
        def final() -> dict:
            run = self.api("GET", f"/flow_runs/{run_id}")
            assert self.proc.poll() is None, f"`llmops up` exited ({self.proc.returncode}):\n{self.log()}"
            return run if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        run = poll(f"flow run {run_id} to finish", final, RUN_S, every=2)
        assert run["state_type"] == "COMPLETED", f"{run['name']}: {run['state_name']}\n{self.log()}"
        return run

    def completed_run(self, deployment: str) -> dict:
        """The deployment's last run once completed, or a new one started through the API and waited for."""
        runs = [r for r in self.runs_of(deployment) if r["state_type"] not in ("FAILED", "CRASHED", "CANCELLED")]
        run = runs[-1] if runs else \
            self.api("POST", f"/deployments/{self.deployments()[deployment]['id']}/create_flow_run")
        return self.wait_final(run["id"])


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    """``llmops up --port P --config FILE --set ...`` in its own session, own store and cache, for the module."""
    folder = tmp_path_factory.mktemp("up")
    (folder / "config.yaml").write_text(PipelineConfig.from_yaml(ROOT / "configs" / "tiny.yaml", OVERRIDES).to_yaml())
    config = PipelineConfig.from_yaml(folder / "config.yaml", SCHEDULE_SETS)
    port = free_port()
    # no Prefect settings of this process (its PREFECT_HOME, an exported API or UI address): `up` sets its own
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_UI_", "PREFECT_SERVER_UI_"))}
    env.update(LLMOPS_CACHE_DIR=str(folder / "cache"), LLMOPS_STORE_URI=str(folder / "store"),
               PREFECT_RUNNER_POLL_FREQUENCY="2",  # the runner picks a run up within 2 s, not 10
               PREFECT_API_LOG_RETRYABLE_ERRORS="true")  # the server logs why it answered 503 (SQLite busy...)
    with open(folder / "up.log", "ab") as log:
        sets = [arg for option in SCHEDULE_SETS for arg in ("--set", option)]
        proc = subprocess.Popen([sys.executable, "-m", "llmops.flows.cli", "up", "--port", str(port), "--config",
                                 str(folder / "config.yaml"), *sets], cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    server = Up(proc, folder, config, f"http://127.0.0.1:{port}/api")
    try:
        def printed_ui() -> str:
            assert proc.poll() is None, f"`llmops up` exited ({proc.returncode}):\n{server.log()}"
            lines = (folder / "up.log").read_text(errors="replace").splitlines()
            return next((line.split(None, 2)[2] for line in lines if line.startswith("Prefect UI:")), "")

        server.ui_url = poll("`llmops up` to print the UI's address", printed_ui, 180)
        poll("the three deployments", lambda: set(FLOWS) <= set(server.deployments()), 180)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)  # `up` stops the runner (and its flow runs), then the server
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- the browser's side ------------------------------------------------------------------------------------------

def wait(driver, timeout: float = PAGE_S):
    """A wait that looks again when React has replaced the element it was looking at (a re-render between finding
    an element and using it), instead of failing on the stale reference."""
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(
        NoSuchElementException, StaleElementReferenceException, ElementClickInterceptedException))


def visible(driver, xpath: str, timeout: float = PAGE_S):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    return wait(driver, timeout).until(ec.visibility_of_element_located((By.XPATH, xpath)))


def click(driver, xpath: str) -> None:
    """Click what ``xpath`` finds once it can be clicked, scrolled into the middle of the window first."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    def clicked(_driver) -> bool:  # found, scrolled and clicked in one go: retried whole if a re-render intervenes
        element = ec.element_to_be_clickable((By.XPATH, xpath))(driver)
        if not element:
            return False
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()
        return True

    wait(driver).until(clicked, f"could not click {xpath}")


def text_in(xpath: str, *texts: str) -> Callable[[object], bool]:
    """A wait condition: what ``xpath`` finds shows every one of ``texts`` (React fills a row's cells one by one, and
    may replace the row meanwhile: it is found again each time)."""
    from selenium.webdriver.common.by import By

    return lambda driver: all(t in driver.find_element(By.XPATH, xpath).text for t in texts)


def page_text(driver) -> str:
    return driver.find_element("tag name", "body").text


def open_deployments(driver, up: Up) -> None:
    """From the address ``llmops up`` printed to the Deployments page, through the UI's navigation."""
    driver.get(up.ui_url)
    visible(driver, "//a[normalize-space()='Deployments']", BOOT_S)
    click(driver, "//a[normalize-space()='Deployments']")
    visible(driver, "//tr[.//a[normalize-space()='train']]")


def open_deployment(driver, up: Up, name: str) -> None:
    open_deployments(driver, up)
    click(driver, f"//tr//a[normalize-space()='{name}'][contains(@href, '/deployment')]")
    visible(driver, "//button[normalize-space()='Run']")  # the deployment's page, not the list


def field_input(driver, title: str):
    """The run form's input labelled ``title`` (the UI adds " (Optional)" to fields with a default)."""
    from selenium.webdriver.common.by import By

    label = visible(driver, f"//label[normalize-space()='{title}' or normalize-space()='{title} (Optional)']")
    return driver.find_element(By.ID, label.get_attribute("for"))


# -- the tests ---------------------------------------------------------------------------------------------------
# (``browser`` before ``up``: where Chromium is missing a test skips before ``llmops up`` spends a minute starting)

def test_the_deployments_page_lists_the_deployments_with_their_schedules(browser, up):
    open_deployments(browser, up)
    for name, flow in FLOWS.items():
        row = f"//tr[.//a[normalize-space()='{name}']]"
        expected = [flow] + ([SCHEDULES[name]] if name in SCHEDULES else [])
        wait(browser).until(text_in(row, *expected), f"{name}'s row shows {expected}")
    train = visible(browser, "//tr[.//a[normalize-space()='train']]")
    assert "Active" not in train.text, f"train has no schedule, yet its row shows one: {train.text!r}"


def test_the_train_form_renders_the_typed_config_and_runs_with_the_changed_field(browser, up):
    from selenium.webdriver.common.keys import Keys

    open_deployment(browser, up, "train")
    click(browser, "//button[normalize-space()='Run']")
    click(browser, "//*[@role='menuitem'][normalize-space()='Custom run']")
    steps = field_input(browser, "Max Steps")
    # the typed configuration: sections and fields titled from the pydantic model, each with its description
    shown = page_text(browser)
    for title in ("Model Name", "DataConfig", "Sources", "TrainConfig", "Block Size", "Promote"):
        assert title in shown, f"the form has no field {title!r}"
    for description in (PipelineConfig.__doc__, DataConfig.model_fields["sources"].description,
                        TrainConfig.model_fields["block_size"].description,
                        PipelineConfig.model_fields["promote"].description):
        assert " ".join(description.split()) in shown, f"the form lacks the description {description!r}"
    assert steps.get_attribute("value") == str(up.config.train.max_steps), "the deployment's value is the default"

    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", steps)
    steps.click()
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys(str(CHANGED_STEPS))
    assert steps.get_attribute("value") == str(CHANGED_STEPS)
    click(browser, "//button[normalize-space()='Submit']")
    # the UI says how it went in a toast: "<run> scheduled to start now", or the error it got
    toast = visible(browser, "//*[@data-sonner-toast]", RUN_S)
    assert "scheduled to start" in toast.text, f"the UI could not start the run: {toast.text!r}\n{up.log()}"

    (run,) = up.runs_of("train")
    run = up.wait_final(run["id"])
    # the form sent the deployment's configuration back whole, with the one field changed
    expected = up.config.with_overrides([f"train.max_steps={CHANGED_STEPS}"])
    assert PipelineConfig.model_validate(run["parameters"]["config"]) == expected

    # and the run trained with it: the version it registered was trained for that many steps
    manifest = json.loads((up.store / "models" / up.config.model_name / "versions" / "1" / "manifest.json").read_text())
    recorded = yaml.safe_load((up.store / "models" / up.config.model_name / "versions" / "1" /
                               "pipeline_config.yaml").read_text())
    assert recorded["train"]["max_steps"] == CHANGED_STEPS
    metrics = (up.store / "runs" / manifest["metadata"]["run_id"] / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(line)["step"] for line in metrics) == CHANGED_STEPS


def test_the_flow_run_pages_show_the_gate_and_drift_artifacts(browser, up):
    train = up.completed_run("train")  # the form's run when the test above ran; else one started here
    monitor = up.completed_run("monitor")  # no traffic yet: the check reports insufficient data, as it must
    name = up.config.model_name
    gate = json.loads((up.store / "models" / name / "versions" / "1" / "manifest.json").read_text())["metadata"]["gate"]
    (drift,) = (json.loads(p.read_text()) for p in (up.store / "monitoring" / name).glob("*/drift.json"))
    verdict = "PROMOTE" if gate["promote"] else "KEEP PRODUCTION"
    expected = {
        "train": (train, artifact_key(name, "evaluation"), f"gate: {verdict}"),
        "monitor": (monitor, artifact_key(name, "drift"), f"drift verdict: {drift['verdict']}"),
    }
    for deployment, (run, key, description) in expected.items():
        open_deployment(browser, up, deployment)
        click(browser, f"//a[normalize-space()='{run['name']}']")
        click(browser, "//*[@role='tab'][normalize-space()='Artifacts']")
        card = f"//*[@data-testid='flow-run-artifacts-grid']//a[.//*[normalize-space()='{key}']]"
        visible(browser, card)
        wait(browser).until(text_in(card, description), f"{run['name']}'s {key} card shows {description!r}")
