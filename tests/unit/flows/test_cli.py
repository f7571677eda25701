"""The ``llmops`` CLI in-process: config printing and its errors, models, rollback, and monitor's usage errors."""
from __future__ import annotations

import json
import os

import pytest
import yaml

from llmops.flows.cli import main, with_sources
from llmops.flows.local.server import quiet_prefect_env
from llmops.infra.config import PipelineConfig
from llmops.infra.store import open_store
from llmops.models.records import GateDecision, VersionMetadata
from llmops.models.release.registry import Registry
from tests.helpers import make_registered_model, tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def _cli_environment(monkeypatch):
    """main() setdefaults a few PREFECT_* variables; pre-set them here so they are undone after each test."""
    for key, value in {**quiet_prefect_env(), "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch.setenv(key, os.environ.get(key, value))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """main(argv) -> (exit status, stdout, stderr) of this call alone."""
    capsys.readouterr()  # drop what set-up wrote (transformers' progress bars)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_config_prints_the_effective_yaml_with_overrides(capsys):
    code, out, err = run(capsys, "config", "--set", "train.max_steps=5", "--set", "data.sources=[a.txt, b.md]")
    assert (code, err) == (0, "")
    printed = PipelineConfig.model_validate(yaml.safe_load(out))
    assert printed.train.max_steps == 5 and printed.data.sources == ["a.txt", "b.md"]
    expected = PipelineConfig().model_dump()
    expected["train"]["max_steps"], expected["data"]["sources"] = 5, ["a.txt", "b.md"]
    assert printed.model_dump() == expected, "nothing but the overridden fields changes"


def test_config_file_then_overrides(capsys, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model_name: file-lm\ntrain:\n  max_steps: 7\n  lr: 0.01\n")
    code, out, _ = run(capsys, "config", "--config", str(path), "--set", "train.max_steps=9")
    printed = yaml.safe_load(out)
    assert code == 0 and printed["model_name"] == "file-lm"
    assert (printed["train"]["max_steps"], printed["train"]["lr"]) == (9, 0.01)


def test_printed_config_loads_back_unchanged(capsys, tmp_path):
    code, first, _ = run(capsys, "config", "--set", "monitor.signal_thresholds={token_frequency: {psi_alert: 0.4}}",
                         "--set", "schedule.retrain_cron=null")
    assert code == 0
    (tmp_path / "printed.yaml").write_text(first)
    code, again, _ = run(capsys, "config", "--config", str(tmp_path / "printed.yaml"))
    assert code == 0 and again == first
    loaded = PipelineConfig.model_validate(yaml.safe_load(again))
    assert loaded.monitor.signal_thresholds["token_frequency"].psi_alert == 0.4


def test_train_data_paths_are_kept_exactly(tmp_path):
    paths = [tmp_path / "it's \"quoted\".txt", "C:\\corpus\\notes.md", "café: résumé.md", "s3://bucket/texts/",
             "data/*.jsonl", "- dash", "builtin://stdlib-docstrings?max_bytes=1000"]
    config = with_sources(PipelineConfig(), paths)
    assert config.data.sources == [str(p) for p in paths]
    assert config.model_dump(exclude={"data"}) == PipelineConfig().model_dump(exclude={"data"})


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=abc", "defaults: 1 invalid field(s)\n  train.max_steps: Input should be a valid integer"),
    ("train.max_stpes=5", "defaults: 1 invalid field(s)\n  train.max_stpes: Extra inputs are not permitted"),
    ("train.max_steps=0",
     "defaults: 1 invalid field(s)\n  train.max_steps: Input should be greater than or equal to 1 (got 0)"),
    ("nonsense", "override 'nonsense' must look like section.field=value"),
    ("train.lr.value=1", "override 'train.lr.value=1': 'lr' is not a section"),
    ("data.sources=[a.txt", "override 'data.sources=[a.txt': the value is not valid YAML (expected ',' or ']'"),
])
def test_a_bad_override_is_an_error_naming_the_field(capsys, override, message):
    code, out, err = run(capsys, "config", "--set", "train.lr=0.001", "--set", override)
    assert code == 2 and out == ""
    assert err.startswith(f"llmops config: error: {message}"), err


def test_bad_yaml_and_missing_config_files_are_errors(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    code, out, err = run(capsys, "config", "--config", str(bad))
    assert code == 2 and out == "" and err.startswith(f"llmops config: error: {bad}: not valid YAML:")

    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    code, _, err = run(capsys, "config", "--config", str(listed))
    assert code == 2 and err == f"llmops config: error: {listed}: the top level must be a mapping, got list\n"

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("monitor:\n  psi_warn: 0.5\n  psi_alert: 0.2\n")
    code, _, err = run(capsys, "config", "--config", str(wrong))
    assert code == 2 and err.startswith(f"llmops config: error: {wrong}: 1 invalid field(s)\n  monitor: ")
    assert "psi_warn (0.5) exceeds psi_alert (0.2)" in err

    code, _, err = run(capsys, "config", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and err == f"llmops config: error: config file {tmp_path / 'nope.yaml'} does not exist\n"


def test_models_on_an_empty_store_says_so(capsys):
    code, out, err = run(capsys, "models")
    assert (code, err) == (0, "")
    assert out == f"model 'llmops-lm' has no registered versions in {open_store().uri}\n"


def test_models_lists_versions_with_their_aliases(capsys, tmp_path):
    store = open_store()
    make_registered_model(store, "llmops-lm", alias="production", seed=0)
    make_registered_model(store, "llmops-lm", alias="staging", seed=1)
    # a version registered by the pipeline records its test bits per byte
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    gate = GateDecision(promote=False, reason="kept", candidate_bits_per_byte=2.345678, threshold=0.0, documents=3)
    Registry(store, "llmops-lm").register(tmp_path / "m", metadata=VersionMetadata(
        run_id="r", dataset="d", dataset_sha256="d" * 64, tokenizer_sha256="t" * 64, gate=gate,
        test_bits_per_byte=2.345678))
    make_registered_model(store, "other-lm", alias="production")

    code, out, _ = run(capsys, "models")
    assert code == 0
    assert [line.split("\t") for line in out.splitlines()] == [
        ["v1", "", "production"], ["v2", "", "staging"], ["v3", "2.3457 bits/byte", ""]]

    Registry(store, "llmops-lm").set_alias("staging", 1, "both on one version")
    assert run(capsys, "models")[1].splitlines()[0] == "v1\t\tproduction, staging"
    assert run(capsys, "models", "--model", "other-lm")[1] == "v1\t\tproduction\n"


def test_rollback_moves_production_back_and_prints_from_and_to(capsys):
    store = open_store()
    make_registered_model(store, "llmops-lm", seed=0)
    make_registered_model(store, "llmops-lm", seed=1)
    registry = Registry(store, "llmops-lm")
    assert registry.alias("production") == 2

    code, out, err = run(capsys, "rollback", "--reason", "bad outputs")
    assert (code, out, err) == (0, "llmops-lm/production: version 2 -> 1\n", "")
    assert registry.alias("production") == 1
    assert registry.history("production")[-1] == {**registry.history("production")[-1], "action": "rollback",
                                                   "from": 2, "version": 1, "reason": "bad outputs"}

    code, out, err = run(capsys, "rollback")
    assert code == 2 and out == ""
    assert err == ("llmops rollback: error: llmops-lm/production is at version 1 and has no earlier version "
                   "to roll back to\n")
    assert registry.alias("production") == 1


def test_rollback_without_the_alias_is_an_error(capsys):
    make_registered_model(open_store(), "llmops-lm", alias="production")
    code, out, err = run(capsys, "rollback", "--alias", "staging")
    assert code == 2 and out == ""
    assert err == "llmops rollback: error: model 'llmops-lm' has no 'staging' alias to roll back\n"
    code, _, err = run(capsys, "rollback", "--model", "never-registered")
    assert code == 2 and err == ("llmops rollback: error: model 'never-registered' has no 'production' alias "
                                 "to roll back\n")


@pytest.mark.parametrize("args, missing", [
    ([], "--reference --current --out"),
    (["--reference", "ref.jsonl", "--out", "drift"], "--current"),
    (["--reference", "ref.jsonl", "--current", "cur.jsonl"], "--out"),
])
def test_monitor_without_its_files_is_a_usage_error(capsys, args, missing):
    code, out, err = run(capsys, "monitor", *args)
    assert code == 2, "status 1 is reserved for an alert under --fail-on-alert"
    assert out == ""
    assert err == (f"llmops monitor: error: missing {missing}; it needs --reference FILE --current FILE --out DIR "
                   "(or --backfill)\n")


def test_monitor_reports_bad_inputs_without_a_traceback(capsys, tmp_path):
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "Return the value for key."}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"body": "no text field"}) + "\n\n")
    base = ["monitor", "--out", str(tmp_path / "out"), "--model-path", str(tmp_path / "model")]

    # the files are checked before the model loads: a typo fails at once
    code, _, err = run(capsys, *base, "--reference", str(tmp_path / "missing.jsonl"), "--current", str(good))
    assert code == 2 and err == f"llmops monitor: error: no such file: {tmp_path / 'missing.jsonl'}\n"

    code, _, err = run(capsys, *base, "--reference", str(good), "--current", str(empty))
    assert code == 2 and err == f"llmops monitor: error: {empty}: no usable text (field 'text' for JSONL/Parquet)\n"

    code, _, err = run(capsys, *base, "--reference", str(good), "--current", str(good),
                       "--model-path", str(tmp_path / "nowhere"))
    assert code == 2
    assert err == (f"llmops monitor: error: --model-path {tmp_path / 'nowhere'} is not a saved model folder "
                   "(no config.json)\n")

    code, _, err = run(capsys, "monitor", "--out", str(tmp_path / "out"), "--reference", str(good),
                       "--current", str(good))
    assert code == 2 and err == ("llmops monitor: error: model 'llmops-lm' has no 'production' alias yet "
                                 "(versions: none)\n")
    assert not (tmp_path / "out").exists()
