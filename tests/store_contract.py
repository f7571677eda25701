"""The behaviour every ArtifactStore backend must show; run against the local directory and against S3 (moto)."""
from __future__ import annotations

import hashlib

import pytest

from llmops.infra.store import ArtifactNotFound, ArtifactStore


def check_store_contract(store: ArtifactStore, tmp_path) -> None:
    sha = store.put_bytes("a/b/c.txt", b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest()
    assert store.get_bytes("a/b/c.txt") == b"hello"
    assert store.exists("a/b/c.txt") and not store.exists("a/b/missing.txt")

    store.put_bytes("a/b/c.txt", b"second")  # overwrite is atomic, never partial
    assert store.get_bytes("a/b/c.txt") == b"second"

    store.put_json("a/meta.json", {"x": 1})
    assert store.get_json("a/meta.json") == {"x": 1}
    store.put_bytes("ab/other.txt", b"not under a/")
    assert store.list("a") == ["a/b/c.txt", "a/meta.json"]
    assert store.list("a/") == ["a/b/c.txt", "a/meta.json"]
    assert store.list("nothing/here") == []

    assert store.put_if_absent("lock/1.json", b"first") is True
    assert store.put_if_absent("lock/1.json", b"second") is False
    assert store.get_bytes("lock/1.json") == b"first"

    src = tmp_path / "upload" / "big.bin"
    src.parent.mkdir(parents=True)
    payload = bytes(range(256)) * 40_000  # 10 MB: a multipart upload on S3
    src.write_bytes(payload)
    assert store.put_file("files/big.bin", src) == hashlib.sha256(payload).hexdigest()
    dest = store.get_file("files/big.bin", tmp_path / "download" / "big.bin")
    assert dest.read_bytes() == payload

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "x.txt").write_text("x")
    (folder / "sub" / "y.txt").write_text("y")
    hashes = store.upload_dir(folder, "dir")
    assert set(hashes) == {"x.txt", "sub/y.txt"}
    out = store.download_dir("dir", tmp_path / "copy")
    assert (out / "sub" / "y.txt").read_text() == "y"

    assert store.key_for(store.uri_for("dir/x.txt")) == "dir/x.txt"
    with pytest.raises(ValueError, match="is not in the artifact store"):
        store.key_for("s3://elsewhere/dir/x.txt")

    store.delete("dir/x.txt")
    assert not store.exists("dir/x.txt")
    with pytest.raises(ArtifactNotFound, match="no artifact at .*dir/x.txt"):
        store.get_bytes("dir/x.txt")
    with pytest.raises(ArtifactNotFound, match="nothing stored under"):
        store.download_dir("missing-prefix", tmp_path / "nowhere")
