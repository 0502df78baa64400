"""The Triton model repository on AWS S3 or an S3-compatible store (MinIO, Ceph, moto).

Transfers go through boto3's transfer manager with the shared settings of
:func:`mlflow_triton.repository.store.transfer_config` (multipart, concurrent parts); conditional writes
(``If-None-Match`` / ``If-Match``) carry the lease; objects on the same endpoint are copied
server-side and inspected with ranged GETs, never downloaded whole::

    store = S3Store("s3://models/triton", endpoint_url="http://minio:9000")
    store.upload_file(Path("model.onnx"), "fraud/3/model.onnx")
"""

from __future__ import annotations

import io
import posixpath
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator
from urllib.parse import urlparse

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

from mlflow_triton.repository.s3_readers import CountingReader, RangeReader
from mlflow_triton.repository.store import (
    MAX_CONCURRENCY,
    MAX_POOL_EXTRA,
    RANGE_READ_BYTES,
    ListedObject,
    ModelRepositoryStore,
    ProgressCallback,
    StoredObject,
    check_key,
    download_transfer_config,
    stream_transfer_config,
    transfer_config,
)


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
        self.transfer_config = transfer_config()
        self.stream_config = stream_transfer_config()
        self.download_config = download_transfer_config()

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

    def list_objects(self, prefix: str = "") -> Iterator[ListedObject]:
        """One ``ListObjectsV2`` per 1,000 keys (no delimiter), ETags included."""
        from botocore.exceptions import BotoCoreError, ClientError

        self._check_prefix(prefix)
        full = (self._key(prefix) if prefix else self.prefix).rstrip("/")
        full = f"{full}/" if full else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            for page in pages:
                for entry in page.get("Contents", []):
                    if entry["Key"] != full:
                        yield ListedObject(entry["Key"][len(full) :], entry["ETag"].strip('"'), entry["Size"])
        except (BotoCoreError, ClientError) as err:
            raise self._fail("list", prefix, err) from err

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

    def download_file(self, key: str, path: Path, size: int | None = None) -> int:
        from boto3.exceptions import S3TransferFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            config = self.download_config if size is None else download_transfer_config(size)
            self.client.download_file(self.bucket, self._key(key), str(path), Config=config)
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
                    self._copy(
                        {"Bucket": self.bucket, "Key": entry["Key"]},
                        self._key(self._check_prefix(target) + relative), entry["Size"],
                    )
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

    def upload_stream(self, reader: BinaryIO, key: str, progress: ProgressCallback | None = None) -> int:
        """Multipart upload of a forward-only stream: parts are read in order and sent
        concurrently, at most ``STREAM_CHUNKS_IN_MEMORY`` of them held at once. An interrupted
        upload is aborted by the transfer manager, so no partial object appears."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        counted = CountingReader(reader)
        try:
            self.client.upload_fileobj(
                counted, self.bucket, self._key(key), Config=self.stream_config, Callback=progress
            )
        except (BotoCoreError, ClientError, S3UploadFailedError) as err:
            raise self._fail("upload to", key, err) from err
        return counted.size

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

    def open_uri(self, uri: str, buffer_bytes: int = RANGE_READ_BYTES) -> BinaryIO | None:
        """Seekable, buffered reader over ``s3://bucket/key`` using ranged GETs.

        Lets a caller inspect part of an object (a zip's central directory, an ONNX graph)
        without moving it. Each refill of the buffer is one GET of ``buffer_bytes``: a reader
        that seeks past large payloads wants a small one.
        """
        stat = self.stat_uri(uri)
        if stat is None:
            return None
        parsed = urlparse(uri)
        raw = RangeReader(self.client, parsed.netloc, parsed.path.lstrip("/"), stat["size"])
        return io.BufferedReader(raw, buffer_size=buffer_bytes)

    def copy_from(self, source_uri: str, key: str) -> int | None:
        """Server-side (multipart) copy from ``s3://bucket/key`` on the same endpoint."""
        from botocore.exceptions import BotoCoreError, ClientError

        parsed = urlparse(source_uri)
        if parsed.scheme != "s3":
            return None
        source = {"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/")}
        try:
            size = self.client.head_object(**source)["ContentLength"]
            self._copy(source, self._key(key), size)
        except (BotoCoreError, ClientError) as err:
            raise self._fail("copy to", key, err) from err
        return size

    def _copy(self, source: dict[str, str], full_key: str, size: int) -> None:
        """One ``CopyObject`` up to :data:`SINGLE_COPY_MAX_BYTES`, parallel ``UploadPartCopy``
        above it (and always above S3's 5 GiB ``CopyObject`` limit)."""
        if size <= SINGLE_COPY_MAX_BYTES:
            self.client.copy_object(CopySource=source, Bucket=self.bucket, Key=full_key)
        else:
            self.client.copy(source, self.bucket, full_key, Config=self.transfer_config)

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


#: Largest object copied with one ``CopyObject`` request: S3's own limit, 5 GiB. Larger ones
#: are copied as parallel ``UploadPartCopy`` parts (S3 requires it). ``benchmarks/copy_strategy.py``
#: measured one ``CopyObject`` 2.3x (16 MiB) to 10x (1 GiB) faster than 16 MiB parts, 10 at a
#: time, on moto; on AWS/MinIO both run inside the storage service and one request is also the
#: fewest billed requests.
SINGLE_COPY_MAX_BYTES = 5 * 1024 * 1024 * 1024

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
