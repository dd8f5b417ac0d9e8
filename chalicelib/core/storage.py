"""Tiny key/value blob storage: one interface over a local folder or an S3 prefix.

Keys are "/"-separated paths relative to the storage root, so the registry layout is
identical on disk and on S3.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from chalicelib.core.aws_clients import LazyClient

_TMP_PREFIX = ".tmp-"  # in-flight local writes; never listed
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class StorageError(Exception):
    """Base class for storage failures."""


class StorageKeyNotFound(StorageError, KeyError):
    """The requested key does not exist."""


@runtime_checkable
class Storage(Protocol):
    """What the registry needs from a blob store; implemented by LocalStorage and S3Storage."""

    @property
    def uri(self) -> str: ...

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def etag(self, key: str) -> str | None: ...

    def list(self, prefix: str = "") -> list[str]: ...


class LocalStorage:
    """Storage rooted at a local folder; writes are atomic via temp file + os.replace."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def uri(self) -> str:
        return str(self.root.resolve())

    def _path(self, key: str) -> Path:
        # Refuse keys that would escape the root (absolute or containing "..").
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid key: {key!r}")
        return self.root / key

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StorageKeyNotFound(key) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def etag(self, key: str) -> str | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        # The inode changes on every os.replace, so rewrites within one mtime tick still differ.
        return f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"

    def list(self, prefix: str = "") -> list[str]:
        folder = prefix.rpartition("/")[0]
        base = self._path(folder) if folder else self.root
        if not base.is_dir():
            return []
        keys = (
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(_TMP_PREFIX)
        )
        return sorted(k for k in keys if k.startswith(prefix))


class S3Storage:
    """Storage under s3://bucket/prefix; each PUT is atomic, so no temp objects are needed."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client

    client = LazyClient("s3")

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError  # with boto3, only on the AWS path

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                raise StorageKeyNotFound(key) from None
            raise

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        return self.etag(key) is not None

    def etag(self, key: str) -> str | None:
        from botocore.exceptions import ClientError  # with boto3, only on the AWS path

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return None
            raise
        return head["ETag"].strip('"')

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix):
            keys.extend(obj["Key"][len(root) :] for obj in page.get("Contents", []))
        return sorted(keys)


def open_storage(uri: str | Path, s3_client: Any = None) -> Storage:
    """Pick a backend from a URI: s3://bucket/prefix is S3, anything else a local folder."""
    text = str(uri)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise StorageError(f"missing bucket in {text!r}")
        return S3Storage(bucket, prefix, s3_client)
    return LocalStorage(Path(text).expanduser())
