"""Triton model repository stores: the interface every store implements, and what they share.

Every store exposes the same small interface on keys relative to the repository root
(``"<model>/config.pbtxt"``, ``"<model>/<version>/model.onnx"``), so the publishing logic is
written once. Keys are validated: nothing can escape the repository prefix. The S3 store
(AWS, MinIO, moto) is :class:`mlflow_triton.repository.s3_store.S3Store`; its transfers share
:func:`transfer_config` (multipart, concurrent parts). A local directory is
:class:`mlflow_triton.repository.local_store.LocalStore`; :func:`mlflow_triton.repository.stores.open_store`
picks one for a URI::

    store = open_store("s3://models/triton", endpoint_url="http://minio:9000")
    store.upload_file(Path("model.onnx"), "fraud/3/model.onnx")
"""

from __future__ import annotations

import logging
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

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
#: A streamed upload (a source that cannot seek) holds its parts in memory until sent: at most
#: STREAM_CHUNKS_IN_MEMORY x STREAM_CHUNKSIZE (32 MB), so a 20 GB publish stays flat.
STREAM_CHUNKSIZE = 8 * MB
STREAM_CHUNKS_IN_MEMORY = 4

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


@dataclass(frozen=True)
class ListedObject:
    """One object seen by :meth:`ModelRepositoryStore.list_objects`.

    ``etag`` is a change token: the same token means the same content, so a reader may keep
    what it read under ``(key, etag)`` and skip the GET while the token holds (S3: the ETag;
    a local store: inode, modification time and size, since every write replaces the file).
    """

    key: str
    etag: str
    size: int


def transfer_config(chunksize: int | None = None, max_concurrency: int | None = None, **extra: Any):
    """The shared ``TransferConfig`` (:data:`MULTIPART_CHUNKSIZE` parts,
    :data:`MAX_CONCURRENCY` at a time), or with other part size and concurrency; ``extra`` are
    further ``TransferConfig`` settings (``max_io_queue``...). The module's settings are read
    at each call."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=chunksize or MULTIPART_THRESHOLD,
        multipart_chunksize=chunksize or MULTIPART_CHUNKSIZE,
        max_concurrency=max_concurrency or MAX_CONCURRENCY,
        use_threads=True,
        **extra,
    )


#: Downloads (the verification's copy of a version) run 4 parts at a time: with 10, boto3 held
#: +126-162 MiB of a 1 GiB download in memory, with 4 (and a 16-chunk write queue) +20 MiB, at
#: the same speed (31-33 s from moto; measured 2026-11-25).
DOWNLOAD_CONCURRENCY = 4
DOWNLOAD_IO_QUEUE = 16


def download_transfer_config(size: int | None = None):
    """:func:`transfer_config` for downloads, with their memory bound. Given the object's
    ``size``, in :data:`DOWNLOAD_CONCURRENCY` ranged parts (of at least
    :data:`MULTIPART_CHUNKSIZE`): the same parallelism in the fewest requests. With 16 MiB
    parts a 1 GiB version took 64 GETs, each a round trip of 10-30 ms on AWS and, on moto, a
    read of the whole object (36 s for 1 GiB; the parts are streamed either way, so their
    size does not change the memory bound)."""
    chunksize = None if size is None else max(MULTIPART_CHUNKSIZE, -(-size // DOWNLOAD_CONCURRENCY))
    return transfer_config(chunksize, max_concurrency=DOWNLOAD_CONCURRENCY, max_io_queue=DOWNLOAD_IO_QUEUE)


def stream_transfer_config():
    """:func:`transfer_config` for a forward-only source, with its memory bound."""
    config = transfer_config(chunksize=STREAM_CHUNKSIZE)
    # s3transfer's setting; boto3's constructor does not take it.
    config.max_in_memory_upload_chunks = STREAM_CHUNKS_IN_MEMORY
    return config


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
    def download_file(self, key: str, path: Path, size: int | None = None) -> int:
        """Stream one object to a local file (never whole in memory); returns its size.
        ``size``, when the caller knows it, lets the store fetch it in fewer requests."""

    @abstractmethod
    def copy_prefix(self, source: str, target: str) -> int:
        """Copy every object under ``source/`` to ``target/`` inside this repository, without
        moving the bytes through this process where the store can; returns the count."""

    @abstractmethod
    def upload_file(self, path: Path, key: str, progress: ProgressCallback | None = None) -> int:
        """Upload a local file; returns the bytes sent."""

    @abstractmethod
    def upload_stream(self, reader: BinaryIO, key: str, progress: ProgressCallback | None = None) -> int:
        """Upload what a forward-only ``reader`` yields, in bounded memory; returns the bytes
        sent. The object appears whole or not at all."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object (no error if missing)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (must end in ``/``); returns the count."""

    def list_objects(self, prefix: str = "") -> Iterator[ListedObject]:
        """Every object under ``prefix`` (``""`` or ending in ``/``), recursively, with its
        change token: one paginated listing (S3: 1,000 keys a request), no content read.

        Raises:
            NotImplementedError: a store without a recursive listing (callers read per model).
        """
        raise NotImplementedError(f"{type(self).__name__} has no recursive listing")

    def stat_uri(self, uri: str) -> dict[str, Any] | None:
        """``{"etag", "size"}`` of an object this store can copy server-side, else None."""
        return None

    def copy_from(self, source_uri: str, key: str) -> int | None:
        """Server-side copy of ``source_uri`` into ``key``; None when not possible here."""
        return None

    def open_uri(self, uri: str, buffer_bytes: int = RANGE_READ_BYTES) -> BinaryIO | None:
        """A seekable reader of an object this store can copy server-side, else None."""
        return None

    def open_object(self, key: str, buffer_bytes: int = RANGE_READ_BYTES) -> BinaryIO:
        """A seekable reader of one object of this repository (S3: ranged GETs)."""
        reader = self.open_uri(self.url(key), buffer_bytes)
        if reader is None:
            raise MlflowException(f"{self.url(key)} does not exist", error_code=RESOURCE_DOES_NOT_EXIST)
        return reader

    def url(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{check_key(key)}"

    @staticmethod
    def _check_prefix(prefix: str) -> str:
        if prefix:
            if not prefix.endswith("/"):
                raise ValueError(f"prefix must be '' or end with '/': {prefix!r}")
            check_key(prefix)
        return prefix


def progress_bar(total: int, description: str) -> ProgressCallback | None:
    """A tqdm progress callback for large transfers: None for small ones, without a TTY, or
    with MLflow's artifact progress bars off (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``, which
    plugin calls and the daemons set to false unless the user set it): one setting for every
    bar a command draws."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    if total < PROGRESS_MIN_BYTES or not sys.stderr.isatty() or not MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get():
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, desc=description, leave=False)
    return bar.update
