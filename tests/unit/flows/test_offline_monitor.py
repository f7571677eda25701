"""``llmops monitor`` on files: reading texts, and drift between stdlib prose halves (quiet) vs prose and code
(alert)."""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from llmops.flows.cli import main
from llmops.flows.local.server import quiet_prefect_env
from llmops.flows.offline_monitor import monitor_files, read_texts
from llmops.infra.config import PipelineConfig
from llmops.models.data.corpus import stdlib_code, stdlib_docstrings
from llmops.models.data.formats import IngestError
from llmops.monitoring.check import load_report
from llmops.monitoring.records import DriftReport
from tests.helpers import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 60  # texts per file: twice min_samples
CONFIG = PipelineConfig.from_dict({"monitor": {"min_samples": 30}, "serve": {"default_max_tokens": 8}})


@dataclass
class Files:
    model: Path
    reference: Path
    same: Path
    code: Path


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    """An untrained tiny model, two disjoint halves of stdlib docstrings, and stdlib code."""
    root = tmp_path_factory.mktemp("offline-monitor")
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    docs = [d.text for d in stdlib_docstrings(max_bytes=150_000, cache_dir=root / "corpus") if 40 <= len(d.text) <= 600]
    code = [d.text for d in stdlib_code(max_bytes=150_000, cache_dir=root / "corpus") if 40 <= len(d.text) <= 600]
    assert len(docs) >= 2 * N and len(code) >= N
    return Files(root / "model", write_jsonl(root / "reference.jsonl", docs[0:2 * N:2]),
                 write_jsonl(root / "same.jsonl", docs[1:2 * N:2]), write_jsonl(root / "code.jsonl", code[:N]))


@dataclass
class Outcome:
    status: int
    stdout: str
    out: Path
    report: DriftReport


def check(files: Files, current: Path, out: Path) -> Outcome:
    torch.manual_seed(0)  # completions are sampled, as the server samples them
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = monitor_files(CONFIG, files.reference, current, out, model_path=files.model, fail_on_alert=True)
    return Outcome(status, buffer.getvalue(), out, load_report((out / "drift.json").read_text()))


@pytest.fixture(scope="module")
def drifted(files, tmp_path_factory) -> Outcome:
    return check(files, files.code, tmp_path_factory.mktemp("drifted") / "out")


@pytest.fixture(scope="module")
def quiet(files, tmp_path_factory) -> Outcome:
    return check(files, files.same, tmp_path_factory.mktemp("quiet") / "out")


def test_read_texts_from_jsonl_keeps_only_usable_text(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text("\n".join([json.dumps({"text": "  first text  "}), "", json.dumps({"body": "no text field"}),
                               json.dumps({"text": 42}), "{not json", json.dumps({"text": "   "}),
                               json.dumps({"text": "x" * 101}), json.dumps({"text": "second\ntext"})]) + "\n")
    config = CONFIG.with_overrides(["serve.max_prompt_chars=100"])
    assert read_texts(path, config) == ["first text", "second\ntext"]
    other_field = tmp_path / "prompts.jsonl"
    other_field.write_text(json.dumps({"prompt": "Return the key."}) + "\n")
    assert read_texts(other_field, CONFIG.with_overrides(["data.text_field=prompt"])) == ["Return the key."]


def test_read_texts_from_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["Return the key.", None, " ", "Open the file."], "n": [1, 2, 3, 4]}),
                   tmp_path / "texts.parquet")
    assert read_texts(tmp_path / "texts.parquet", CONFIG) == ["Return the key.", "Open the file."]


def test_read_texts_from_txt_cuts_paragraphs_at_the_prompt_limit(tmp_path):
    path = tmp_path / "notes.txt"
    paragraphs = ["Open the file and return a stream.", "Return the number of items\nin the container.",
                  "word " * 30]
    path.write_text("\n\n".join(paragraphs) + "\n")
    texts = read_texts(path, CONFIG.with_overrides(["serve.max_prompt_chars=80"]))
    # paragraphs are packed up to the limit (34 + 2 + 44 = 80 fits), a longer one is cut at it
    assert texts[0] == paragraphs[0] + "\n\n" + paragraphs[1]
    assert all(len(t) <= 80 for t in texts) and len(texts) == 3
    assert " ".join(texts[1:]).split() == ["word"] * 30
    assert read_texts(path, CONFIG.with_overrides(["serve.max_prompt_chars=40"]))[:2] == [
        paragraphs[0], "Return the number of items"]


def test_read_texts_explains_missing_empty_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^no such file: {tmp_path / 'nope.jsonl'}$"):
        read_texts(tmp_path / "nope.jsonl", CONFIG)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"body": "x"}) + "\n\n")
    with pytest.raises(ValueError, match=rf"^{empty}: no usable text \(field 'text' for JSONL/Parquet\)$") as caught:
        read_texts(empty, CONFIG)
    assert isinstance(caught.value, IngestError), "the CLI reports IngestErrors instead of a traceback"
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    with pytest.raises(IngestError, match="no usable text"):
        read_texts(blank, CONFIG)
    table = tmp_path / "texts.csv"
    table.write_text("text\nhello\n")
    with pytest.raises(IngestError,
                       match=r"texts.csv: unsupported file type '.csv'; use one of .txt, .md, .jsonl, .parquet"):
        read_texts(table, CONFIG)


def test_code_against_prose_alerts_and_fails_the_check(drifted):
    report = drifted.report
    assert report.verdict == "alert" and drifted.status == 1
    assert report.n_samples == N and report.model_version == 0 and report.min_samples == 30
    assert report.alerting and all(report.signals[s].status == "alert" and not report.signals[s].report_only
                                   for s in set(report.alerting) - {"domain_classifier"})
    assert report.classifier.status == "alert" and "domain_classifier" in report.alerting  # code is not prose
    assert report.severity in ("medium", "high")
    assert f"verdict: alert (severity {report.severity}); {N} current records" in drifted.stdout
    assert f"scoring {N} reference texts from" in drifted.stdout and f"scoring {N} current texts from" in drifted.stdout


@pytest.mark.parametrize("which", ["drifted", "quiet"])
def test_the_check_writes_drift_json_summary_and_html_report(which, request):
    outcome: Outcome = request.getfixturevalue(which)
    for name in ("drift.json", "summary.md", "report.html"):
        assert (outcome.out / name).is_file() and (outcome.out / name).stat().st_size > 0, name
    assert outcome.report.files["report_html"] == "report.html"
    assert outcome.report.out_dir == str(outcome.out.resolve())
    summary = (outcome.out / "summary.md").read_text()
    assert outcome.report.verdict in summary
    assert "<html" in (outcome.out / "report.html").read_text()[:2000].lower()


def test_two_halves_of_the_same_prose_do_not_alert(quiet):
    assert quiet.report.verdict != "alert" and quiet.report.alerting == []
    assert quiet.status == 0, "--fail-on-alert fails only on an alert"
    assert quiet.report.n_samples == N
    assert f"verdict: {quiet.report.verdict} " in quiet.stdout


def test_llmops_monitor_without_fail_on_alert_exits_0_on_an_alert(files, tmp_path, capsys, monkeypatch):
    for key, value in {**quiet_prefect_env(), "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch.setenv(key, os.environ.get(key, value))  # main() setdefaults these; undone after the test
    torch.manual_seed(0)
    code = main(["monitor", "--reference", str(files.reference), "--current", str(files.code), "--out",
                 str(tmp_path / "cli"), "--model-path", str(files.model), "--set", "monitor.min_samples=30",
                 "--set", "serve.default_max_tokens=8", "--set", "monitor.evidently_report=false"])
    out = capsys.readouterr().out
    assert code == 0 and "verdict: alert" in out
    assert load_report((tmp_path / "cli" / "drift.json").read_text()).verdict == "alert"
    assert not (tmp_path / "cli" / "report.html").exists()
