"""Task timeouts: every task has one, from the documented table or LLMOPS_TASK_TIMEOUTS."""
from __future__ import annotations

import importlib
import pkgutil

import pytest
from prefect import Task

import llmops.tasks as tasks_pkg
from llmops.infra.settings import get_settings
from llmops.tasks.core.context import ACCELERATOR_TAG, TASK_TIMEOUTS_S, timeout_s


def _all_tasks() -> dict[str, Task]:
    found = {}
    for info in pkgutil.iter_modules(tasks_pkg.__path__):
        module = importlib.import_module(f"llmops.tasks.{info.name}")
        found.update({obj.name: obj for obj in vars(module).values() if isinstance(obj, Task)})
    return found


def test_every_task_has_its_documented_timeout_and_train_holds_the_accelerator():
    tasks = _all_tasks()
    assert set(tasks) == set(TASK_TIMEOUTS_S), "a task without a documented timeout, or a stale entry"
    assert {name: t.timeout_seconds for name, t in tasks.items()} == TASK_TIMEOUTS_S
    assert tasks["train-model"].retries == 1 and ACCELERATOR_TAG in tasks["train-model"].tags
    assert sorted(n for n, t in tasks.items() if ACCELERATOR_TAG in t.tags) == ["distill-model", "train-model"]


def test_timeouts_can_be_overridden_and_unknown_names_are_refused(monkeypatch):
    monkeypatch.setenv("LLMOPS_TASK_TIMEOUTS", '{"train-model": 7200}')
    get_settings.cache_clear()
    assert timeout_s("train-model") == 7200 and timeout_s("check-drift") == TASK_TIMEOUTS_S["check-drift"]
    monkeypatch.setenv("LLMOPS_TASK_TIMEOUTS", '{"train": 7200}')
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="unknown tasks \\['train'\\]"):
        timeout_s("train-model")
