"""The S3 backend over real HTTP against moto's server on 127.0.0.1 (the same contract as the local store)."""
from __future__ import annotations

import time

import pytest

from llmops.infra.store import S3Store, StoreError, open_store
from tests.store_contract import check_store_contract


def test_s3_store_meets_the_contract(s3_bucket, tmp_path):
    store = open_store(f"s3://{s3_bucket}/some/prefix")
    assert isinstance(store, S3Store) and store.uri == f"s3://{s3_bucket}/some/prefix"
    check_store_contract(store, tmp_path)
    raw = store.client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert all(obj["Key"].startswith("some/prefix/") for obj in raw)


def test_a_missing_bucket_is_a_clear_error(s3_bucket):
    store = open_store("s3://no-such-bucket/x")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        store.put_bytes("k", b"v")


def test_artifact_links_to_an_s3_store_are_presigned_urls_another_host_can_open(s3_bucket, monkeypatch):
    import httpx

    from llmops.infra.settings import get_settings
    from llmops.tasks.core.context import link

    monkeypatch.setenv("LLMOPS_STORE_URI", f"s3://{s3_bucket}/p")
    monkeypatch.setenv("LLMOPS_REPORT_URL_EXPIRY_S", "600")
    get_settings.cache_clear()
    store = open_store()
    store.put_bytes("monitoring/lm/w1/report.html", b"<h1>drift</h1>")
    url = link(store.uri_for("monitoring/lm/w1/report.html"))
    query = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))
    expires = int(query["X-Amz-Expires"]) if "X-Amz-Expires" in query else int(query["Expires"]) - time.time()
    assert url.startswith("http") and 590 <= expires <= 600  # SigV4 names the duration, SigV2 the moment
    opened = httpx.get(url)  # no credentials: the signature in the URL is the access
    assert opened.status_code == 200 and opened.content == b"<h1>drift</h1>"
    assert httpx.get(url.replace("report.html", "other.html")).status_code in (403, 404), "the URL opens one key"


def test_presigned_links_are_signed_for_the_public_endpoint_browsers_reach(s3_bucket, monkeypatch):
    """In the compose stack the store is http://s3:9000 to the services and http://localhost:9000 to a browser."""
    import httpx

    from llmops.infra.settings import get_settings

    internal = get_settings().s3_endpoint_url
    public = internal.replace("127.0.0.1", "localhost")
    monkeypatch.setenv("LLMOPS_S3_PUBLIC_ENDPOINT_URL", public)
    get_settings.cache_clear()
    store = open_store(f"s3://{s3_bucket}/p")
    store.put_bytes("r.html", b"report")  # the store itself still talks to the internal endpoint
    url = store.browser_url("r.html", 600)
    assert url.startswith(f"{public}/") and not url.startswith(internal)
    assert httpx.get(url).content == b"report"
