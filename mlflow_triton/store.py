"""Triton model repository stores: S3 (and S3-compatible: MinIO, moto) or a local directory.

Both stores expose the same small interface on keys relative to the repository root
(``"<model>/config.pbtxt"``, ``"<model>/<version>/model.onnx"``), so the publishing logic is
written once. Keys are validated: nothing can escape the repository prefix.

Uploads go through boto3's transfer manager with one shared :data:`TRANSFER_CONFIG`
(multipart, concurrent parts)::

    store = open_store("s3://models/triton", endpoint_url="http://minio:9000")
    store.upload_file(Path("model.onnx"), "fraud/3/model.onnx")
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable
from urllib.parse import urlparse

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

logger = logging.getLogger(__name__)

KB = 1024
MB = KB * KB
#: Shared transfer settings: 16 MB parts, 10 parts in flight (boto3's defaults are 8 MB / 10).
MULTIPART_THRESHOLD = 16 * MB
MULTIPART_CHUNKSIZE = 16 * MB
MAX_CONCURRENCY = 10
MAX_POOL_EXTRA = 22
PROGRESS_MIN_BYTES = 64 * MB
RANGE_READ_BYTES = 1 * MB

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class StoredObject:
    """One small object read with what conditional writes and leases need.

    ``age_s`` is measured by the store's clock alone (S3: the response's ``Date`` minus the
    object's ``Last-Modified``), so clock skew between publishers cannot make a lease look
    expired.
    """

    data: bytes
    etag: str
    age_s: float


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=MULTIPART_CHUNKSIZE,
        max_concurrency=MAX_CONCURRENCY,
        use_threads=True,
    )


def check_key(key: str) -> str:
    """Return ``key`` if it is a clean relative key inside the repository.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for empty, absolute or ``..`` keys.
    """
    parts = key.rstrip("/").split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise MlflowException.invalid_parameter_value(
            f"Refusing repository key {key!r}: keys must be relative, without '.', '..' or "
            "empty segments."
        )
    return key


class ModelRepositoryStore(ABC):
    """A Triton model repository; all keys are relative to its root."""

    uri: str

    @abstractmethod
    def check(self) -> None:
        """Fail early with a clear message if the repository cannot be used."""

    @abstractmethod
    def list_dir(self, prefix: str = "") -> tuple[list[str], list[str]]:
        """Immediate children of ``prefix`` (``""`` or ending in ``/``): (folders, files)."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object atomically (readers see the old or the new content)."""

    @abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> str | None:
        """Create ``key`` only if it does not exist: its ETag, or None when it already does
        (or a concurrent conditional write won the race)."""

    @abstractmethod
    def read_object(self, key: str) -> StoredObject | None:
        """Content, ETag and age (by the store's own clock) of ``key``, or None."""

    @abstractmethod
    def replace_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Overwrite ``key`` only if its ETag is still ``etag``: the new ETag, or None."""

    @abstractmethod
    def download_file(self, key: str, path: Path) -> int:
        """Stream one object to a local file (never whole in memory); returns its size."""

    @abstractmethod
    def copy_prefix(self, source: str, target: str) -> int:
        """Copy every object under ``source/`` to ``target/`` inside this repository, without
        moving the bytes through this process where the store can; returns the count."""

    @abstractmethod
    def upload_file(self, path: Path, key: str, progress: ProgressCallback | None = None) -> int:
        """Upload a local file; returns the bytes sent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object (no error if missing)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (must end in ``/``); returns the count."""

    def stat_uri(self, uri: str) -> dict[str, Any] | None:
        """``{"etag", "size"}`` of an object this store can copy server-side, else None."""
        return None

    def copy_from(self, source_uri: str, key: str) -> int | None:
        """Server-side copy of ``source_uri`` into ``key``; None when not possible here."""
        return None

    def open_uri(self, uri: str) -> BinaryIO | None:
        """A seekable reader of an object this store can copy server-side, else None."""
        return None

    def url(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{check_key(key)}"

    @staticmethod
    def _check_prefix(prefix: str) -> str:
        if prefix:
            if not prefix.endswith("/"):
                raise ValueError(f"prefix must be '' or end with '/': {prefix!r}")
            check_key(prefix)
        return prefix


class LocalStore(ModelRepositoryStore):
    """A repository on a local or shared filesystem (Triton reads the same path)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def check(self) -> None:
        if not self.root.is_dir():
            raise MlflowException(
                f"Model repository directory {self.root} does not exist: create it, or point "
                "model_repository at s3://bucket/prefix.",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).rstrip("/").split("/"))

    def list_dir(self, prefix: str = "") -> tuple[list[str], list[str]]:
        base = self._path(self._check_prefix(prefix)) if prefix else self.root
        if not base.is_dir():
            return [], []
        entries = sorted(base.iterdir())
        return (
            [e.name for e in entries if e.is_dir()],
            [e.name for e in entries if e.is_file() and not e.name.startswith(".tmp-")],
        )

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)

    def create_exclusive(self, key: str, data: bytes) -> str | None:
        """Written to a temporary file, then hard-linked into place: the link fails if the
        key exists, and a reader never sees a half-written object."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.link(tmp, path)
        except FileExistsError:
            return None
        finally:
            os.unlink(tmp)
        return _md5(data)

    def read_object(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
            modified = path.stat().st_mtime
        except FileNotFoundError:
            return None
        return StoredObject(data, _md5(data), max(0.0, time.time() - modified))

    def replace_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Compare-and-swap under an exclusive ``flock`` on the object's folder (a lock file
        would need deleting, and deleting a file another process has locked breaks the lock)."""
        import fcntl

        path = self._path(key)
        try:
            folder = os.open(path.parent, os.O_RDONLY)
        except FileNotFoundError:  # the folder went with its last object: nothing to match
            return None
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            current = self.read_object(key)
            if current is None or current.etag != etag:
                return None
            self.write_bytes(key, data)
            return _md5(data)
        finally:
            os.close(folder)

    def download_file(self, key: str, path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), path)
        return path.stat().st_size

    def copy_prefix(self, source: str, target: str) -> int:
        """Hard links where possible: files are only ever replaced, never modified in place."""
        source_dir = self._path(self._check_prefix(source))
        target_dir = self._path(self._check_prefix(target))
        count = 0
        for file in sorted(p for p in source_dir.rglob("*") if p.is_file()):
            destination = target_dir / file.relative_to(source_dir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.unlink(missing_ok=True)
            try:
                os.link(file, destination)
            except OSError:
                shutil.copy2(file, destination)
            count += 1
        return count

    def upload_file(self, path: Path, key: str, progress: ProgressCallback | None = None) -> int:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
        size = target.stat().st_size
        if progress:
            progress(size)
        return size

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        _remove_empty_parents(path.parent, self.root)

    def delete_prefix(self, prefix: str) -> int:
        path = self._path(self._check_prefix(prefix))
        if not path.exists():
            return 0
        count = sum(1 for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path)
        _remove_empty_parents(path.parent, self.root)
        return count


class S3Store(ModelRepositoryStore):
    """A repository at ``s3://bucket/prefix`` on AWS S3 or an S3-compatible endpoint."""

    def __init__(self, uri: str, endpoint_url: str | None = None, client=None) -> None:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise MlflowException.invalid_parameter_value(
                f"Invalid S3 repository URI {uri!r}: expected s3://bucket/prefix."
            )
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url
        if client is None:
            import boto3
            from botocore.config import Config

            # One pool slot per concurrent transfer part, plus room for concurrent callers.
            pool = Config(max_pool_connections=MAX_CONCURRENCY + MAX_POOL_EXTRA)
            client = boto3.client("s3", endpoint_url=endpoint_url, config=pool)
        self.client = client
        self.transfer_config = _transfer_config()

    @property
    def resolved_endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def _key(self, key: str) -> str:
        return posixpath.join(self.prefix, check_key(key)) if self.prefix else check_key(key)

    def _fail(self, action: str, key: str, err: Exception) -> MlflowException:
        from botocore.exceptions import ClientError, NoCredentialsError

        where = f"s3://{self.bucket}/{self._key(key) if key else self.prefix}"
        if isinstance(err, NoCredentialsError):
            return MlflowException(
                f"Cannot {action} {where}: no AWS credentials found. Set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / an instance role).",
                error_code=INTERNAL_ERROR,
            )
        if isinstance(err, ClientError):
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404") and not key:
                return MlflowException(
                    f"S3 bucket {self.bucket!r} does not exist at {self.resolved_endpoint}: "
                    "create it or fix model_repository / s3_endpoint_url.",
                    error_code=RESOURCE_DOES_NOT_EXIST,
                )
            return MlflowException(
                f"Cannot {action} {where}: {code or err}", error_code=INTERNAL_ERROR
            )
        return MlflowException(
            f"Cannot {action} {where} at {self.resolved_endpoint}: {err}", error_code=INTERNAL_ERROR
        )

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as err:
            raise self._fail("use bucket of", "", err) from err

    def list_dir(self, prefix: str = "") -> tuple[list[str], list[str]]:
        from botocore.exceptions import BotoCoreError, ClientError

        self._check_prefix(prefix)
        full = (self._key(prefix) if prefix else self.prefix).rstrip("/")
        full = f"{full}/" if full else ""
        folders: list[str] = []
        files: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/"
            )
            for page in pages:
                folders += [p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
                files += [o["Key"][len(full) :] for o in page.get("Contents", []) if o["Key"] != full]
        except (BotoCoreError, ClientError) as err:
            raise self._fail("list", prefix, err) from err
        return sorted(folders), sorted(files)

    def read_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail("read", key, err) from err
        except BotoCoreError as err:
            raise self._fail("read", key, err) from err

    def write_bytes(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (BotoCoreError, ClientError) as err:
            raise self._fail("write", key, err) from err

    def create_exclusive(self, key: str, data: bytes) -> str | None:
        """Conditional write (``If-None-Match: *``), supported by S3 since 2024 and MinIO.

        412 means the key exists; 409 ``ConditionalRequestConflict`` is what AWS answers the
        loser of two racing conditional writes: both mean "not created".
        """
        return self._conditional_put("create", key, data, IfNoneMatch="*")

    def replace_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Conditional overwrite (``If-Match: etag``), supported by S3 since 2024 and MinIO."""
        return self._conditional_put("replace", key, data, IfMatch=f'"{etag}"')

    def _conditional_put(self, action: str, key: str, data: bytes, **condition: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
        except ClientError as err:
            # 404 answers If-Match on a key that no longer exists: not written either.
            if _status(err) in CONDITION_FAILED_STATUSES or ("IfMatch" in condition and _status(err) == 404):
                return None
            raise self._fail(action, key, err) from err
        except BotoCoreError as err:
            raise self._fail(action, key, err) from err
        return response["ETag"].strip('"')

    def read_object(self, key: str) -> StoredObject | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            data = response["Body"].read()
        except ClientError as err:
            if _status(err) == 404:
                return None
            raise self._fail("read", key, err) from err
        except BotoCoreError as err:
            raise self._fail("read", key, err) from err
        return StoredObject(data, response["ETag"].strip('"'), _age_s(response))

    def download_file(self, key: str, path: Path) -> int:
        from boto3.exceptions import S3TransferFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(key), str(path), Config=self.transfer_config)
        except (BotoCoreError, ClientError, S3TransferFailedError) as err:
            raise self._fail("download", key, err) from err
        return path.stat().st_size

    def copy_prefix(self, source: str, target: str) -> int:
        """Server-side copies (multipart above the transfer threshold): no bytes pass here."""
        from botocore.exceptions import BotoCoreError, ClientError

        source_full = self._key(self._check_prefix(source))
        count = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=source_full)
            for page in pages:
                for entry in page.get("Contents", []):
                    relative = entry["Key"][len(source_full) :]
                    self.client.copy(
                        {"Bucket": self.bucket, "Key": entry["Key"]}, self.bucket,
                        self._key(self._check_prefix(target) + relative), Config=self.transfer_config,
                    )  # fmt: skip
                    count += 1
        except (BotoCoreError, ClientError) as err:
            raise self._fail("copy to", target, err) from err
        return count

    def upload_file(self, path: Path, key: str, progress: ProgressCallback | None = None) -> int:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        size = path.stat().st_size
        try:
            self.client.upload_file(
                str(path), self.bucket, self._key(key), Config=self.transfer_config,
                Callback=progress,
            )  # fmt: skip
        except (BotoCoreError, ClientError, S3UploadFailedError) as err:
            raise self._fail("upload to", key, err) from err
        return size

    def stat_uri(self, uri: str) -> dict[str, Any] | None:
        """ETag and size of ``s3://bucket/key`` if this store's endpoint and credentials see it."""
        from botocore.exceptions import BotoCoreError, ClientError

        parsed = urlparse(uri)
        if parsed.scheme != "s3":
            return None
        try:
            head = self.client.head_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        except (BotoCoreError, ClientError):
            return None  # another endpoint or no access: the caller downloads instead
        return {"etag": head["ETag"].strip('"'), "size": head["ContentLength"]}

    def open_uri(self, uri: str) -> BinaryIO | None:
        """Seekable, buffered reader over ``s3://bucket/key`` using ranged GETs.

        Lets a caller inspect part of an object (a zip's central directory) without moving it.
        """
        stat = self.stat_uri(uri)
        if stat is None:
            return None
        parsed = urlparse(uri)
        raw = _RangeReader(self.client, parsed.netloc, parsed.path.lstrip("/"), stat["size"])
        return io.BufferedReader(raw, buffer_size=RANGE_READ_BYTES)

    def copy_from(self, source_uri: str, key: str) -> int | None:
        """Server-side (multipart) copy from ``s3://bucket/key`` on the same endpoint."""
        from botocore.exceptions import BotoCoreError, ClientError

        parsed = urlparse(source_uri)
        if parsed.scheme != "s3":
            return None
        source = {"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/")}
        try:
            size = self.client.head_object(**source)["ContentLength"]
            self.client.copy(source, self.bucket, self._key(key), Config=self.transfer_config)
        except (BotoCoreError, ClientError) as err:
            raise self._fail("copy to", key, err) from err
        return size

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as err:
            raise self._fail("delete", key, err) from err

    def delete_prefix(self, prefix: str) -> int:
        """Delete under ``prefix/`` only: the trailing slash keeps ``foo`` from hitting ``foo_bar``.

        Raises:
            MlflowException: INTERNAL_ERROR naming each key S3 refused to delete and its S3
                error code (``delete_objects`` answers 200 with per-key errors), after deleting
                every other key.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(self._check_prefix(prefix)).rstrip("/") + "/"
        count = 0
        failed: list[dict[str, Any]] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    # S3 answers 200 even when keys fail (AccessDenied...): Quiet lists only those.
                    response = self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                    )
                    errors = response.get("Errors", [])
                    failed.extend(errors)
                    count += len(keys) - len(errors)
        except (BotoCoreError, ClientError) as err:
            raise self._fail("delete", prefix, err) from err
        if failed:
            raise MlflowException(
                f"Could not delete {len(failed)} object(s) under s3://{self.bucket}/{full} "
                f"({count} deleted): {self._describe_delete_errors(failed)}",
                error_code=INTERNAL_ERROR,
            )
        return count

    @staticmethod
    def _describe_delete_errors(errors: list[dict[str, Any]], limit: int = 10) -> str:
        """``key (Code: Message)`` for each per-key error of ``delete_objects``, ``limit`` at most."""
        described = [
            f"{e.get('Key', '?')} ({e.get('Code', 'unknown')}"
            f"{': ' + e['Message'] if e.get('Message') else ''})"
            for e in errors[:limit]
        ]
        more = f" and {len(errors) - limit} more" if len(errors) > limit else ""
        return "; ".join(described) + more


class _RangeReader(io.RawIOBase):
    """A read-only, seekable view of one S3 object, each read one ``Range`` GET."""

    def __init__(self, client, bucket: str, key: str, size: int) -> None:
        self.client, self.bucket, self.key, self.size, self.position = client, bucket, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        if self.position >= self.size or len(buffer) == 0:
            return 0
        end = min(self.position + len(buffer), self.size) - 1
        data = self.client.get_object(
            Bucket=self.bucket, Key=self.key, Range=f"bytes={self.position}-{end}"
        )["Body"].read()
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


#: HTTP statuses of a conditional write that did not happen: 412 Precondition Failed, and
#: 409 ConditionalRequestConflict (AWS, for the loser of racing conditional writes).
CONDITION_FAILED_STATUSES = (409, 412)


def _status(err: Exception) -> int | None:
    """The HTTP status of a botocore ``ClientError``."""
    return getattr(err, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")


def _age_s(response: dict[str, Any]) -> float:
    """Seconds since ``Last-Modified``, by the server's ``Date`` header (local clock if absent)."""
    from email.utils import parsedate_to_datetime

    modified = response["LastModified"]
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    now = parsedate_to_datetime(date).timestamp() if date else time.time()
    return max(0.0, now - modified.timestamp())


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _remove_empty_parents(folder: Path, root: Path) -> None:
    """Remove ``folder`` and its parents up to ``root`` while empty (S3 has no folders either)."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def open_store(uri: str, endpoint_url: str | None = None) -> ModelRepositoryStore:
    """The store for ``uri``: ``s3://bucket/prefix`` or a local directory path.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for any other URI scheme.
    """
    try:
        parsed = urlparse(uri)
        if parsed.scheme == "s3":
            return S3Store(uri, endpoint_url=endpoint_url)
        if parsed.scheme in ("", "file"):
            return LocalStore(parsed.path if parsed.scheme == "file" else uri)
    except (ValueError, RuntimeError) as err:  # unclosed "[", NUL byte, "~nosuchuser"
        raise MlflowException.invalid_parameter_value(
            f"Invalid model repository {uri!r}: {err}. Use s3://bucket/prefix or a local directory."
        ) from err
    raise MlflowException.invalid_parameter_value(
        f"Unsupported model repository {uri!r}: use s3://bucket/prefix or a local directory "
        "(gs:// and as:// repositories are not supported yet)."
    )


def progress_bar(total: int, description: str) -> ProgressCallback | None:
    """A tqdm progress callback for large transfers (None for small ones or without a TTY)."""
    if total < PROGRESS_MIN_BYTES:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, desc=description, leave=False)
    return bar.update
