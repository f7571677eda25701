"""The S3 backend over real HTTP against moto's server on 127.0.0.1 (the same contract as the local store)."""
from __future__ import annotations

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
