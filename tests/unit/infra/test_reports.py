"""``llmops reports``: report files of a local store over HTTP, and nothing else."""
from __future__ import annotations

from starlette.testclient import TestClient

from llmops.infra.reports import reports_app
from llmops.infra.settings import get_settings
from llmops.infra.store import LocalStore
from llmops.tasks.core.context import link


def test_report_files_are_served_and_weights_traffic_and_escapes_are_not(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_bytes("monitoring/lm/w1/report.html", b"<h1>drift</h1>")
    store.put_bytes("models/lm/versions/1/README.md", b"# card")
    store.put_bytes("models/lm/versions/1/model.safetensors", b"weights")
    store.put_bytes("traffic/lm/2026/12/07/10/a.jsonl", b'{"prompt": "private"}')
    (tmp_path / "secret.html").write_text("outside")
    client = TestClient(reports_app(store.root))
    page = client.get("/monitoring/lm/w1/report.html")
    assert page.status_code == 200 and page.text == "<h1>drift</h1>" and page.headers["content-type"].startswith(
        "text/html")
    assert client.get("/models/lm/versions/1/README.md").text == "# card"
    for path in ("/models/lm/versions/1/model.safetensors", "/traffic/lm/2026/12/07/10/a.jsonl",
                 "/monitoring/../../secret.html", "/monitoring/%2e%2e/%2e%2e/secret.html", "/nothing.html"):
        assert client.get(path).status_code == 404, path


def test_links_point_at_the_report_server_when_one_is_configured(tmp_path, monkeypatch):
    store_root = tmp_path / "store"
    monkeypatch.setenv("LLMOPS_STORE_URI", str(store_root))
    get_settings.cache_clear()
    uri = LocalStore(store_root).uri_for("monitoring/lm/w1/report.html")
    assert link(uri) == f"file://{uri}"
    monkeypatch.setenv("LLMOPS_REPORT_BASE_URL", "http://reports.internal:8090/")
    get_settings.cache_clear()
    assert link(uri) == "http://reports.internal:8090/monitoring/lm/w1/report.html"
    assert link("https://elsewhere/x.html") == "https://elsewhere/x.html"
