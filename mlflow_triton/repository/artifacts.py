"""MLflow artifact access, in one place: download, list, and read as a stream.

Every read of an MLflow model's files goes through here (the MLmodel, a Triton model folder,
a pyfunc model, golden outputs, an input example), so failures are reported one way
(RESOURCE_DOES_NOT_EXIST naming the artifact and the model) and local paths are recognized by
one test (:func:`local_path`)::

    folder = download_artifact("models:/fraud/3/triton-model", tmp, "models:/fraud/3")
    folders, files = list_artifact_folder("runs:/abc/model", "runs:/abc/model")

MLflow's public download API writes a local copy first; for a model of several GB that is a
full extra pass over the disk before the upload can start. :func:`open_artifact` opens the
artifact where it lives and yields a plain reader that the repository store feeds into its
multipart upload while the publisher hashes it (:class:`HashingReader`)::

    with open_artifact("mlflow-artifacts:/1/models/m-1/artifacts/model.onnx") as artifact:
        if artifact is not None:
            hashing = HashingReader(artifact.reader)
            store.upload_stream(hashing, "fraud/3/model.onnx")
            hashing.sha256, hashing.size

Supported: local paths and ``file://``, ``s3://`` (the endpoint MLflow itself uses,
``MLFLOW_S3_ENDPOINT_URL``), and the MLflow server's artifact proxy (``mlflow-artifacts:/``,
``http(s)://``, with the tracking server's credentials). For any other scheme it yields None
and the caller downloads with :func:`download_artifact`.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import unquote, urlparse

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

#: Bytes asked of the source per read: the size of one HTTP chunk / S3 body read.
STREAM_READ_BYTES = 1024 * 1024


@dataclass
class ArtifactStream:
    """An open artifact: a forward-only ``reader`` and its ``size`` when the source says it."""

    uri: str
    reader: BinaryIO
    size: int | None


class HashingReader:
    """A forward-only reader that hashes (SHA-256) and counts what passes through it, and
    optionally writes it to ``spool`` (a local copy made in the same pass).

    Deliberately not seekable: boto3's transfer manager then reads it strictly in order (its
    non-seekable upload path), so the digest is the digest of the uploaded object.
    """

    def __init__(self, raw: BinaryIO, spool: Path | None = None) -> None:
        self._raw = raw
        self._digest = hashlib.sha256()
        self.size = 0
        self._spool = None
        if spool is not None:
            spool.parent.mkdir(parents=True, exist_ok=True)
            self._spool = open(spool, "wb")

    def read(self, amount: int = -1) -> bytes:
        data = self._raw.read(amount if amount is not None and amount >= 0 else -1)
        self._digest.update(data)
        self.size += len(data)
        if self._spool is not None:
            self._spool.write(data)
        return data

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


class _IterReader:
    """A file-like ``read(n)`` over an iterator of byte chunks (an HTTP response body)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def read(self, amount: int = -1) -> bytes:
        if amount is None or amount < 0:
            return self._pending + b"".join(self._chunks)
        parts, have = [self._pending], len(self._pending)
        while have < amount:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._pending = data[amount:]
        return data[:amount]


def _not_found(uri: str, err: Exception, model_uri: str | None = None) -> MlflowException:
    of = f" of {model_uri}" if model_uri and model_uri != uri else ""
    return MlflowException(f"Cannot read the artifact {uri}{of}: {err}", error_code=RESOURCE_DOES_NOT_EXIST)


def local_path(uri: str) -> Path | None:
    """The file or folder behind a local path or ``file://`` URI; None for remote URIs."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(uri) if parsed.scheme == "" else None


def download_artifact(uri: str, destination: Path | None, model_uri: str | None = None) -> Path:
    """Download ``uri`` (a file or a folder, streamed to disk) into ``destination`` (None: a
    new temporary folder, as MLflow does).

    Raises:
        MlflowException: RESOURCE_DOES_NOT_EXIST naming ``uri`` (and ``model_uri``).
    """
    import mlflow

    if destination is not None:
        destination.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(destination) if destination is not None else None
        ))  # fmt: skip
    except Exception as err:
        raise _not_found(uri, err, model_uri) from err


def list_artifact_folder(uri: str, model_uri: str | None = None) -> tuple[list[str], list[str]]:
    """The sub-folder names and file names directly inside the artifact folder ``uri``.

    Raises:
        MlflowException: RESOURCE_DOES_NOT_EXIST naming ``uri`` (and ``model_uri``).
    """
    import mlflow

    try:
        listing = mlflow.artifacts.list_artifacts(artifact_uri=uri)
    except Exception as err:
        raise _not_found(uri, err, model_uri) from err
    names = [(info.path.rstrip("/").rpartition("/")[2], info.is_dir) for info in listing]
    return sorted(n for n, is_dir in names if is_dir), sorted(n for n, is_dir in names if not is_dir)


STREAMABLE_SCHEMES = ("", "file", "s3", "mlflow-artifacts", "http", "https")


def streamable(uri: str) -> bool:
    """Whether :func:`open_artifact` can stream ``uri`` (else: download it)."""
    return urlparse(uri).scheme in STREAMABLE_SCHEMES


@contextmanager
def open_artifact(uri: str) -> Iterator[ArtifactStream | None]:
    """Open ``uri`` for one sequential read; yields None when its scheme is not streamable here.

    Raises:
        MlflowException: RESOURCE_DOES_NOT_EXIST when the artifact cannot be opened.
    """
    parsed = urlparse(uri)
    path = local_path(uri)
    if path is not None:
        try:
            handle = open(path, "rb")
        except OSError as err:
            raise _not_found(uri, err) from err
        with handle:
            yield ArtifactStream(uri, handle, path.stat().st_size)
        return
    if parsed.scheme == "s3":
        with _open_s3(uri, parsed.netloc, parsed.path.lstrip("/")) as stream:
            yield stream
        return
    if parsed.scheme in ("mlflow-artifacts", "http", "https"):
        with _open_http(uri) as stream:
            yield stream
        return
    yield None


@contextmanager
def _open_s3(uri: str, bucket: str, key: str) -> Iterator[ArtifactStream]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    # The endpoint MLflow's own S3 artifact repository uses for this URI.
    client = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError) as err:
        raise _not_found(uri, err) from err
    body = response["Body"]
    try:
        yield ArtifactStream(uri, body, response.get("ContentLength"))
    finally:
        body.close()


@contextmanager
def _open_http(uri: str) -> Iterator[ArtifactStream]:
    """Stream through the MLflow server's artifact proxy with the tracking credentials."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import augmented_raise_for_status, http_request

    folder, _, name = uri.rstrip("/").rpartition("/")
    repository = get_artifact_repository(folder)
    if not isinstance(repository, HttpArtifactRepository):  # pragma: no cover - mlflow resolves it
        raise _not_found(uri, TypeError(f"{type(repository).__name__} is not an HTTP artifact repository"))
    try:
        response = http_request(
            get_default_host_creds(repository.artifact_uri), posixpath.join("/", name), "GET", stream=True
        )
        augmented_raise_for_status(response)
    except Exception as err:
        raise _not_found(uri, err) from err
    length = response.headers.get("Content-Length")
    try:
        yield ArtifactStream(uri, _IterReader(response.iter_content(STREAM_READ_BYTES)), int(length) if length else None)
    finally:
        response.close()
