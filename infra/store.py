"""The artifact store: one interface over a local directory and S3 (boto3), with atomic writes and sha256s."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from llmops.infra.settings import Settings, get_settings

_CHUNK = 1 << 20


class ArtifactNotFound(FileNotFoundError):
    """A key the store does not hold."""


class StoreError(RuntimeError):
    """The store could not be reached or refused an operation."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_key(*parts: str) -> str:
    """The content address of a stage's output: sha256 (hex) of its input parts joined by NUL."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_key(key: str) -> str:
    """Return ``key`` if it is a clean relative POSIX key, else raise ``ValueError`` saying why."""
    if not key or not isinstance(key, str):
        raise ValueError(f"store key must be a non-empty string, got {key!r}")
    if key.startswith("/") or "\\" in key or "//" in key:
        raise ValueError(f"store key {key!r} must be relative, use '/' separators and no empty parts")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"store key {key!r} must not contain '.', '..' or a trailing '/'")
    return key


class ArtifactStore(ABC):
    """Keys are relative POSIX paths such as ``models/lm/versions/3/config.json``.

    Writes are atomic: a reader sees the old object or the new one, never a partial one.
    Multi-object artifacts commit a small manifest last; readers trust only what a manifest names.
    """

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key`` atomically and return its sha256."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` only if nothing is there; return whether it was written."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read ``key``; raise ``ArtifactNotFound`` when it is missing."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike) -> str:
        """Upload a local file atomically and return its sha256."""

    @abstractmethod
    def get_file(self, key: str, dest: str | os.PathLike) -> Path:
        """Download ``key`` to the local path ``dest`` (atomically) and return it."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys under ``prefix`` (a folder-like prefix, with or without a trailing '/'), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def uri_for(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{validate_key(key)}"

    def key_for(self, uri: str) -> str:
        """The key of a URI that this store issued; a clear error for a URI of another store."""
        root = self.uri.rstrip("/") + "/"
        if not uri.startswith(root):
            raise ValueError(f"{uri!r} is not in the artifact store {self.uri!r}")
        return validate_key(uri[len(root):])

    def local_path(self, key: str) -> Optional[Path]:
        """The file behind ``key`` when the store is a local directory, else None."""
        return None

    def browser_url(self, key: str, expires_s: int) -> Optional[str]:
        """An HTTPS URL a browser on another host can open for ``expires_s`` seconds, where the store can sign one
        (S3: a presigned GET); None otherwise."""
        return None

    def put_json(self, key: str, obj: Any) -> str:
        return self.put_bytes(key, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def get_json(self, key: str) -> Any:
        raw = self.get_bytes(key)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.uri_for(key)} is not valid JSON: {exc}") from exc

    def put_text(self, key: str, text: str) -> str:
        return self.put_bytes(key, text.encode("utf-8"))

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode("utf-8")

    def upload_dir(self, local_dir: str | os.PathLike, prefix: str) -> dict[str, str]:
        """Upload every file under ``local_dir`` below ``prefix``; return {relative path: sha256}."""
        local_dir = Path(local_dir)
        hashes = {}
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(local_dir).as_posix()
            hashes[rel] = self.put_file(f"{prefix.rstrip('/')}/{rel}", path)
        return hashes

    def download_dir(self, prefix: str, dest: str | os.PathLike) -> Path:
        """Download every key under ``prefix`` into ``dest``, keeping relative paths."""
        dest = Path(dest)
        prefix = prefix.rstrip("/") + "/"
        keys = self.list(prefix)
        if not keys:
            raise ArtifactNotFound(f"nothing stored under {self.uri_for(prefix.rstrip('/'))}")
        for key in keys:
            self.get_file(key, dest / key[len(prefix):])
        return dest


class LocalStore(ArtifactStore):
    """A directory on disk. Atomic by write-to-temp + ``os.replace`` (same filesystem)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _tmp_for(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex}"

    def _commit(self, tmp: Path, final: Path) -> None:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def put_bytes(self, key: str, data: bytes) -> str:
        final = self._path(key)
        tmp = self._tmp_for(final)
        try:
            tmp.write_bytes(data)
            self._commit(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return sha256_bytes(data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        final = self._path(key)
        tmp = self._tmp_for(final)
        try:
            tmp.write_bytes(data)
            os.link(tmp, final)  # fails if final exists: an exclusive, atomic create
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ArtifactNotFound(f"no artifact at {self.uri_for(key)}") from None

    def put_file(self, key: str, path: str | os.PathLike) -> str:
        final = self._path(key)
        tmp = self._tmp_for(final)
        try:
            shutil.copyfile(path, tmp)
            self._commit(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return sha256_file(final)

    def get_file(self, key: str, dest: str | os.PathLike) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise ArtifactNotFound(f"no artifact at {self.uri_for(key)}")
        dest = Path(dest)
        tmp = self._tmp_for(dest)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if prefix:
            validate_key(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and ".tmp-" not in p.name
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Optional[Path]:
        return self._path(key)


class S3Store(ArtifactStore):
    """``s3://bucket/prefix`` through boto3; works with AWS, MinIO and moto's server (custom endpoint).

    A single PUT is atomic in S3, so objects never appear half-written; large files go up as a
    multipart upload that S3 only exposes once completed. ``put_if_absent`` uses a conditional
    write (``If-None-Match: *``).
    """

    def __init__(self, uri: str, settings: Optional[Settings] = None):
        import boto3
        from botocore.config import Config

        settings = settings or get_settings()
        if not uri.startswith("s3://") or len(uri) <= 5:
            raise ValueError(f"an S3 store URI looks like s3://bucket/prefix, got {uri!r}")
        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise ValueError(f"S3 store URI {uri!r} names no bucket")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        credentials = {}
        if settings.s3_access_key_id and settings.s3_secret_access_key:
            credentials = {
                "aws_access_key_id": settings.s3_access_key_id.get_secret_value(),
                "aws_secret_access_key": settings.s3_secret_access_key.get_secret_value(),
            }
        def client(endpoint_url: Optional[str]):
            return boto3.client("s3", endpoint_url=endpoint_url, region_name=settings.s3_region,
                                config=Config(retries={"max_attempts": 5, "mode": "standard"}), **credentials)

        self.client = client(settings.s3_endpoint_url)
        # a presigned URL's signature covers its host, so links for browsers are signed by a client of the
        # endpoint they reach; presigning is local, this client never connects
        self._signer = client(settings.s3_public_endpoint_url) if settings.s3_public_endpoint_url else self.client

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            where = f"{self.uri}/{key}"
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ArtifactNotFound(f"no artifact at {where}") from None
            if code == "NoSuchBucket":
                raise StoreError(f"bucket {self.bucket!r} does not exist ({what} {where})") from exc
            raise StoreError(f"S3 {what} of {where} failed: {code or exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"S3 {what} of {self.uri}/{key} failed: {exc}") from exc

    def browser_url(self, key: str, expires_s: int) -> Optional[str]:
        return self._call("presign", key, self._signer.generate_presigned_url, ClientMethod="get_object",
                          Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s)

    def put_bytes(self, key: str, data: bytes) -> str:
        self._call("put", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)
        return sha256_bytes(data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self._call("conditional put", key, self.client.put_object,
                       Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            return True
        except StoreError as exc:
            if "PreconditionFailed" in str(exc) or "ConditionalRequestConflict" in str(exc):
                return False
            raise

    def get_bytes(self, key: str) -> bytes:
        response = self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return response["Body"].read()

    def put_file(self, key: str, path: str | os.PathLike) -> str:
        self._call("upload", key, self.client.upload_file,
                   Filename=str(path), Bucket=self.bucket, Key=self._key(key))
        return sha256_file(path)

    def get_file(self, key: str, dest: str | os.PathLike) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.tmp-")
        os.close(fd)
        try:
            self._call("download", key, self.client.download_file,
                       Bucket=self.bucket, Key=self._key(key), Filename=tmp)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return dest

    def exists(self, key: str) -> bool:
        try:
            self._call("head", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
            return True
        except ArtifactNotFound:
            return False

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix.rstrip("/")) + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self._call("list", prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full))):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self._iter_keys(prefix))

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))


def open_store(uri: Optional[str] = None, settings: Optional[Settings] = None) -> ArtifactStore:
    """The store at ``uri`` (default: ``LLMOPS_STORE_URI``, else ``./llmops-store``)."""
    settings = settings or get_settings()
    uri = uri or settings.store_uri
    if uri.startswith("s3://"):
        return S3Store(uri, settings)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported store URI {uri!r}: use a local directory or s3://bucket/prefix")
    return LocalStore(uri.removeprefix("file://"))
