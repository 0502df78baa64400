"""Moving a model's files into a repository version folder: copy, stream or upload.

The transport knows no model formats (as KServe's storage initializer chooses only by URI
scheme): it is given the files to move, the model file first, and an optional *inspector*, the
flavor's function that reads a model file's tensors and the companion files it needs (ONNX
external data) without reading its weights. :func:`locate` decides how the files travel and,
where it can without moving bytes, what they are; :func:`transfer` moves them::

    located = locate(store, [("s3://mlflow/1/model.onnx", "model.onnx")], inspect, tmp)
    uploaded, copied = transfer(store, located, "fraud/3/", spool=None)
    located.entries, located.inspection          # provenance entries, the model's tensors

1. **copy**: every file is on the repository's S3 endpoint: the model file is inspected with
   ranged GETs and the files are copied server-side; nothing passes through this process.
2. **stream**: the model file is remote and can be read as a stream (the MLflow server's
   artifact proxy, S3 on another endpoint; :func:`~mlflow_triton.repository.artifacts.open_artifact`):
   each file flows into the repository's multipart upload while it is hashed, in one pass and
   bounded memory; the model file is then inspected from the uploaded copy with ranged GETs.
3. **upload**: local files are read in place (hashed, uploaded; nothing copied to a temporary
   folder); any other artifact store is downloaded once, hashed and uploaded.

The model file is inspected the same way on every path, so every path generates the same
config.pbtxt.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Literal, Protocol, Sequence

from mlflow_triton.repository.artifacts import (
    HashingReader,
    download_artifact,
    local_path,
    open_artifact,
    streamable,
)
from mlflow_triton.repository.store import ModelRepositoryStore, progress_bar

logger = logging.getLogger(__name__)

#: Ranged-read size for walking a remote model file: each seek past a weight costs one GET.
GRAPH_READ_BYTES = 64 * 1024


class FileToMove(Protocol):
    """One file: ``origin`` (an artifact URI or a local path) and ``target`` in the version folder."""

    origin: str
    target: str


class InspectionResult(Protocol):
    """What an inspector found: the tensors (any object) and the companion files to move too."""

    io: Any
    companions: Sequence[FileToMove]


#: Reads a model file (a local path or a seekable reader) without its weights.
Inspector = Callable[[Path | BinaryIO], InspectionResult]


@dataclass
class Located:
    """The files to publish and how.

    Attributes:
        kind: ``copy`` (S3 URIs copied server-side), ``stream`` (artifact URIs streamed into
            the upload) or ``upload`` (local files, in place or downloaded).
        files: ``(origin, target)`` pairs, the model file first.
        entries: their provenance entries (``file`` and ``sha256`` or ``etag``, ``size``).
        inspection: what the inspector read from the model file (None without an inspector).
            ``entries`` and ``inspection`` are known up front except for a stream, where
            :func:`transfer` fills them in as the bytes pass.
        complete_local_copy: a local copy of the model file with its companions beside it,
            when one exists anyway (for the verification's local reference run).
    """

    kind: Literal["copy", "stream", "upload"]
    files: list[tuple[str, str]]
    entries: list[dict[str, Any]] | None
    inspection: InspectionResult | None
    inspect: Inspector | None = None
    complete_local_copy: Path | None = None

    @property
    def streamed(self) -> bool:
        return self.kind == "stream"


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entries(files: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Provenance entries (target, sha256, size) of local files, streamed to hash them."""
    return [
        {"file": target, "sha256": sha256_file(Path(path)), "size": Path(path).stat().st_size}
        for path, target in files
    ]


def locate(
    store: ModelRepositoryStore, files: Sequence[FileToMove], inspect: Inspector | None, tmp: Path
) -> Located:
    """How ``files`` (the model file first) reach the repository (see the module docstring);
    a remote artifact that cannot be streamed is downloaded into ``tmp`` now."""
    pairs = [(f.origin, f.target) for f in files]
    copied = _locate_copy(store, pairs, inspect)
    if copied is not None:
        return copied
    model_origin, model_target = pairs[0]
    if local_path(model_origin) is None and streamable(model_origin) and len(pairs) == 1:
        return Located("stream", pairs, None, None, inspect)
    paths = [_local_file(origin, tmp) for origin, _ in pairs]
    inspection = inspect(paths[0]) if inspect is not None else None
    for companion in inspection.companions if inspection is not None else ():
        pairs.append((companion.origin, companion.target))
        paths.append(_local_file(companion.origin, paths[0].parent))
    located = list(zip(map(str, paths), (target for _, target in pairs), strict=True))
    return Located("upload", located, file_entries(located), inspection, inspect, complete_local_copy=paths[0])


def _locate_copy(store: ModelRepositoryStore, pairs: list[tuple[str, str]], inspect: Inspector | None) -> Located | None:
    """The copy path when every file (companions included) is on the repository's endpoint."""
    stats = [store.stat_uri(origin) for origin, _ in pairs]
    if not all(stats):
        return None
    inspection = None
    if inspect is not None:
        with store.open_uri(pairs[0][0], buffer_bytes=GRAPH_READ_BYTES) as reader:
            inspection = inspect(reader)
        companions = [(c.origin, c.target) for c in inspection.companions]
        companion_stats = [store.stat_uri(origin) for origin, _ in companions]
        if not all(companion_stats):
            return None
        pairs, stats = pairs + companions, stats + companion_stats
    entries = [{"file": target, **stat} for (_, target), stat in zip(pairs, stats, strict=True)]
    return Located("copy", pairs, entries, inspection, inspect)


def _local_file(origin: str, folder: Path) -> Path:
    """The local file behind ``origin``: in place for a local path, else downloaded."""
    local = local_path(origin)
    return local if local is not None else download_artifact(origin, folder)


def transfer(
    store: ModelRepositoryStore, located: Located, prefix: str, spool: Path | None, label: str | None = None
) -> tuple[int, int]:
    """Copy, stream or upload the located files under ``prefix`` (a version folder):
    (bytes uploaded, bytes copied).

    Args:
        spool: for a stream, also keep a local copy in this folder, in the same pass (for the
            verification's local reference run: the only reason that path writes to disk).
        label: what the log line calls the files (default: ``NAME version N`` from ``prefix``).
    """
    name, _, version = prefix.rstrip("/").rpartition("/")
    label = label or f"{name} version {version}"
    uploaded = copied = 0
    if located.kind == "stream":
        uploaded = _stream_files(store, located, prefix, spool)
    for (origin, target), entry in zip(located.files, located.entries or [], strict=located.kind != "stream"):
        if located.kind == "copy":
            copied += store.copy_from(origin, prefix + target) or 0
        elif located.kind == "upload":
            uploaded += store.upload_file(
                Path(origin), prefix + target, progress_bar(entry["size"], f"upload {label}: {target}")
            )
    verb = {"copy": "Copied", "stream": "Streamed", "upload": "Uploaded"}[located.kind]
    logger.info("%s %s (%d bytes) to %s", verb, label, copied or uploaded, store.url(prefix))
    return uploaded, copied


def read_inspection(store: ModelRepositoryStore, key: str, inspect: Inspector) -> InspectionResult:
    """Inspect a model file already in the repository (ranged reads on S3)."""
    with store.open_object(key, buffer_bytes=GRAPH_READ_BYTES) as reader:
        return inspect(reader)


def _stream_files(store: ModelRepositoryStore, located: Located, prefix: str, spool: Path | None) -> int:
    model_uri, model_name = located.files[0]
    entries = [_stream_file(store, model_uri, prefix + model_name, spool / model_name if spool else None)]
    if located.inspect is not None:
        # Read back from the uploaded copy: a few ranged GETs, no second pass.
        located.inspection = read_inspection(store, prefix + model_name, located.inspect)
        for companion in located.inspection.companions:
            located.files.append((companion.origin, companion.target))
            target = spool / companion.target if spool else None
            entries.append(_stream_file(store, companion.origin, prefix + companion.target, target))
    located.entries = entries
    if spool:
        located.complete_local_copy = spool / model_name
    return sum(entry["size"] for entry in entries)


def _stream_file(store: ModelRepositoryStore, uri: str, key: str, spool: Path | None) -> dict[str, Any]:
    """One artifact into ``key`` while hashing (and, with ``spool``, copying it there)."""
    with open_artifact(uri) as artifact:
        assert artifact is not None  # locate() chose this path because it is streamable
        hashing = HashingReader(artifact.reader, spool)
        try:
            store.upload_stream(hashing, key, progress_bar(artifact.size or 0, f"upload {store.url(key)}"))
        finally:
            hashing.close()
    return {"file": key.rpartition("/")[2], "sha256": hashing.sha256, "size": hashing.size}
