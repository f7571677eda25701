"""Headless Chromium for the ``browser`` tests, and what a failing test leaves behind: a screenshot and the page.

Chromium and its driver come from Debian's ``chromium`` and ``chromium-driver`` (``.ci/system``), selenium from the
``test`` extra. Without them the tests skip, or fail under ``LLMOPS_REQUIRE_SERVICES=1``
(:func:`tests.services.require`). On a failure (in the test or in its set-up) the browser's screenshot, HTML and
console go to ``tests/browser/screenshots/`` (``LLMOPS_SCREENSHOT_DIR`` elsewhere), named after the test; the report
says where.
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

from tests.services import require

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DRIVER = pytest.StashKey[object]()  # the module's WebDriver, while one is open: what the failure hook shoots


def screenshot_dir() -> Path:
    return Path(os.environ.get("LLMOPS_SCREENSHOT_DIR") or Path(__file__).parent / "screenshots")


@pytest.fixture(scope="module")
def browser(request):
    """A headless Chromium WebDriver for the module (its pages share one browser: each start costs seconds)."""
    require(os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing (Debian's chromium package)")
    require(os.access(CHROMEDRIVER, os.X_OK), f"{CHROMEDRIVER} is missing (Debian's chromium-driver package)")
    require(importlib.util.find_spec("selenium") is not None, "selenium is missing (pip install -e '.[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start; /dev/shm is small in containers.
    # A wide window: the deployments table drops columns (the schedules) on a narrow one.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1200"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, saved with a failure
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    request.config.stash[DRIVER] = driver
    try:
        yield driver
    finally:
        del request.config.stash[DRIVER]
        driver.quit()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    driver = item.config.stash.get(DRIVER, None)
    if not report.failed or report.when == "teardown" or driver is None:
        return
    folder = screenshot_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{item.name}-{report.when}")
    try:
        driver.save_screenshot(str(stem.with_suffix(".png")))
        stem.with_suffix(".html").write_text(driver.page_source, encoding="utf-8")
        console = "\n".join(f"{e['level']} {e['message']}" for e in driver.get_log("browser"))
        stem.with_suffix(".console.txt").write_text(console, encoding="utf-8")
        saved = f"{stem}.png, .html and .console.txt (page {driver.current_url})"
    except Exception as exc:  # a dead browser: the failure itself must still be reported
        saved = f"nothing: the browser did not answer ({exc!r})"
    report.sections.append(("browser", f"screenshot and page saved: {saved}"))
