"""A Triton model repository on a local or shared filesystem (Triton reads the same path).

Writes replace files atomically (a temporary file renamed over the key), so a reader never sees
half a config; conditional writes are exclusive creates and compare-and-swap under a lock
file; a version folder is copied with hard links (a staging copy costs no bytes)::

    store = LocalStore("/srv/triton-models")
    store.write_bytes("fraud/config.pbtxt", text)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Iterator

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_triton.repository.store import (
    RANGE_READ_BYTES,
    STREAM_CHUNKSIZE,
    ListedObject,
    ModelRepositoryStore,
    ProgressCallback,
    StoredObject,
    check_key,
)  # fmt: skip


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

    def list_objects(self, prefix: str = "") -> Iterator[ListedObject]:
        """Files under ``prefix`` in key order; temporary files of writes in flight are skipped."""
        base = self._path(self._check_prefix(prefix)) if prefix else self.root
        if not base.is_dir():
            return
        for folder, folders, files in os.walk(base):
            folders.sort()
            relative = Path(folder).relative_to(self.root).as_posix()
            for name in sorted(files):
                if name.startswith(".tmp-"):
                    continue
                try:
                    stat = os.stat(os.path.join(folder, name))
                except FileNotFoundError:  # replaced or deleted since the walk saw it
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                yield ListedObject(key, f"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}", stat.st_size)

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

    def download_file(self, key: str, path: Path, size: int | None = None) -> int:
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

    def upload_stream(self, reader: BinaryIO, key: str, progress: ProgressCallback | None = None) -> int:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        size = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                while block := reader.read(STREAM_CHUNKSIZE):
                    handle.write(block)
                    size += len(block)
                    if progress:
                        progress(len(block))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            _remove_empty_parents(target.parent, self.root)
            raise
        return size

    def open_object(self, key: str, buffer_bytes: int = RANGE_READ_BYTES) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as err:
            raise MlflowException(f"{self.url(key)} does not exist", error_code=RESOURCE_DOES_NOT_EXIST) from err

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


