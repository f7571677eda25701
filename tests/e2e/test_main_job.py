"""The README's main job, ``llmops run``, end to end on the tiny preset in a fresh working directory.

Real parts throughout: a `prefect server start` child process, the deployments served by a
runner process, the training pipeline, uvicorn with the OpenAI client, the drift checks, the
trigger-started retrain and its gate. Only the model size differs from `make run`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llmops.monitoring.records import DriftReport

ROOT = Path(__file__).parents[2]


def test_llmops_run_closes_the_loop(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOPS_", "PREFECT_API_URL"))}
    env.pop("PREFECT_HOME", None)
    done = subprocess.run(
        [sys.executable, "-m", "llmops.flows.cli", "run", "--config", str(ROOT / "configs" / "tiny.yaml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]

    store = tmp_path / "llmops-store"
    windows = sorted((store / "monitoring" / "llmops-tiny").glob("*/drift.json"))
    assert len(windows) == 3, out[-3000:]
    familiar, drifted, after = (DriftReport.model_validate_json(p.read_text()) for p in windows)
    assert familiar.verdict != "alert" and drifted.verdict == "alert"
    assert (windows[1].parent / "report.html").stat().st_size > 100_000  # Evidently's HTML
    assert "event: alert confirmed" in out
    assert "triggered flow run" in out and "retrain finished: Completed" in out

    versions = store / "models" / "llmops-tiny" / "versions"
    assert (versions / "1" / "README.md").read_text().startswith("---\n")
    second = json.loads((versions / "2" / "manifest.json").read_text())
    gate = second["metadata"]["gate"]
    assert f"gate decision for v2: {'promoted' if gate['promote'] else 'not promoted'}" in out
    # the drift retrain is a warm start on the drifted window, judged on held-out traffic and the old test split
    assert [s["rule"] for s in gate["slices"]] == ["improve", "no_regression"]
    assert "held-out traffic: v2" in out and "production test split: v2" in out
    assert "## Adaptation" in (versions / "2" / "README.md").read_text()
    production = json.loads((store / "models" / "llmops-tiny" / "aliases" / "production.json").read_text())
    assert production["version"] == (2 if gate["promote"] else 1)
    assert list(store.glob("runs/*/loss.png")), "the loss curve is saved as a PNG"
    traffic = list(store.glob("traffic/llmops-tiny/*/*/*/*/*.jsonl"))
    assert sum(len(p.read_text().splitlines()) for p in traffic) == (familiar.n_samples + drifted.n_samples
                                                                     + after.n_samples)
    if gate["promote"]:  # v2 was adapted to code and its reference profile is held-out code: fresh code is familiar
        assert after.model_version == 2 and after.verdict != "alert", out[-3000:]
