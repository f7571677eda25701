"""The local-directory store: the shared contract, key validation, atomicity."""
from __future__ import annotations

import os

import pytest

from llmops.infra.store import LocalStore, open_store, validate_key
from tests.store_contract import check_store_contract


def test_local_store_meets_the_contract(tmp_path):
    check_store_contract(LocalStore(tmp_path / "store"), tmp_path)


@pytest.mark.parametrize("key, why", [
    ("", "non-empty"), ("/abs/key", "relative"), ("a/../b", "'..'"), ("a//b", "relative"),
    ("a\\b", "relative"), ("dir/", "trailing"), ("./a", "'.'"),
])
def test_bad_keys_are_refused_with_the_reason(key, why):
    with pytest.raises(ValueError, match=why):
        validate_key(key)


def test_a_failed_write_leaves_the_old_object_and_no_temp_files(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.put_bytes("model.bin", b"good")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.put_bytes("model.bin", b"half-written")
    monkeypatch.undo()
    assert store.get_bytes("model.bin") == b"good"
    assert store.list() == ["model.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_open_store_reads_the_setting_and_rejects_unknown_schemes(tmp_path, monkeypatch):
    from llmops.infra.settings import get_settings

    monkeypatch.setenv("LLMOPS_STORE_URI", str(tmp_path / "from-env"))
    get_settings.cache_clear()
    assert open_store().uri == str(tmp_path / "from-env")
    with pytest.raises(ValueError, match="unsupported store URI 'gs://bucket'"):
        open_store("gs://bucket")
    with pytest.raises(ValueError, match="names no bucket"):
        open_store("s3:///prefix")


def test_settings_never_print_credentials(monkeypatch):
    from llmops.infra.settings import Settings

    monkeypatch.setenv("LLMOPS_S3_SECRET_ACCESS_KEY", "very-secret")
    settings = Settings()
    assert "very-secret" not in repr(settings) and "very-secret" not in str(settings)
    assert settings.s3_secret_access_key.get_secret_value() == "very-secret"
