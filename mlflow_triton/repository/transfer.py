"""Moving a model's files into a repository version folder: copy, stream or download.

:func:`locate` decides how the files of an MLflow model reach ``NAME/<version>/`` and,
where it can without moving bytes, what they are; :func:`transfer` moves them::

    located = locate(store, source, tmp)          # reads the graph, not the weights
    uploaded, copied = transfer(store, located, source, "fraud/3/", spool=None)
    located.entries, located.io                   # provenance entries, the model's tensors

1. **copy**: every file (the model and, for ONNX, the external data its graph names) is on the
   repository's S3 endpoint: the graph is read with ranged GETs and the files are copied
   server-side; nothing passes through this process.
2. **stream**: the artifact store is remote and can be read as a stream (the MLflow server's
   artifact proxy, S3 on another endpoint; :mod:`mlflow_triton.repository.artifacts`): each file
   flows into the repository's multipart upload while it is hashed, in one overlapped pass and
   bounded memory; the tensors are then read from the uploaded copy with ranged GETs, so a
   config the model cannot take is refused after the transfer (and the copy removed).
3. **download**: a local model is used in place (read, hashed, uploaded; nothing copied to a
   temporary folder); any other artifact store is downloaded once, hashed and uploaded.

The tensors come from the same place on every path (the ONNX graph without its weights; the
signature for TorchScript), so every path generates the same config.pbtxt.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal
from urllib.parse import unquote, urlparse

from mlflow.exceptions import MlflowException

from mlflow_triton.triton_config import model_config as mcfg
from mlflow_triton.flavors import pyfunc as pyfunc_serving
from mlflow_triton.flavors import triton_source
from mlflow_triton.repository.artifacts import HashingReader, open_artifact, streamable
from mlflow_triton.flavors.model_source import ModelSource, check_torchscript
from mlflow_triton.repository.store import ModelRepositoryStore, progress_bar

if TYPE_CHECKING:
    from mlflow_triton.settings.deployment import DeploymentConfig

logger = logging.getLogger(__name__)

#: Ranged-read size for walking a remote ONNX graph: each seek past a weight costs one GET.
GRAPH_READ_BYTES = 64 * 1024


@dataclass
class Located:
    """The files to publish and how.

    Attributes:
        kind: ``copy`` (S3 URIs copied server-side), ``stream`` (artifact URIs streamed into
            the upload) or ``download`` (local paths uploaded).
        files: ``(origin, target file name)`` pairs, the model file first.
        entries: their provenance entries (``file`` and ``sha256`` or ``etag``, ``size``).
        io: the model's tensors. ``entries`` and ``io`` are known up front except for a
            stream, where :func:`transfer` fills them in as the bytes pass.
        complete_local_copy: a local copy of the model file with its external data beside it
            (for the verification's local reference run), when one was made anyway.
    """

    kind: Literal["copy", "stream", "download"]
    files: list[tuple[str, str]]
    entries: list[dict[str, Any]] | None
    io: mcfg.ModelIO | None
    complete_local_copy: Path | None = None
    #: ``(name, version) -> ModelConfig`` for flavors whose config is not generated from ``io``.
    build_config: Any = None

    @property
    def streamed(self) -> bool:
        return self.kind == "stream"


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def inspect_model(source: ModelSource, model: Path | BinaryIO) -> tuple[mcfg.ModelIO, list[str]]:
    """The tensors of a model file and the external-data files its graph names; checks that a
    TorchScript file is TorchScript. Reads the graph, never the weights."""
    if source.flavor == "onnx":
        io = mcfg.with_signature_names(mcfg.io_from_onnx(model), source.signature)
        return io, mcfg.onnx_external_data(model)
    check_torchscript(model, source.model_uri)
    return mcfg.io_from_signature(source.signature, source.flavor), []


def read_io(store: ModelRepositoryStore, source: ModelSource, key: str) -> mcfg.ModelIO:
    """The tensors of a model file already in the repository (ranged reads on S3)."""
    with store.open_object(key, buffer_bytes=GRAPH_READ_BYTES) as reader:
        return inspect_model(source, reader)[0]


def locate(store: ModelRepositoryStore, source: ModelSource, tmp: Path, config: "DeploymentConfig") -> Located:
    """How ``source``'s files reach the repository (see the module docstring); the download
    path downloads into ``tmp`` now."""
    if triton_source.is_directory_flavor(source.flavor):
        return _locate_directory(source, tmp, config)
    filename = mcfg.MODEL_FILENAMES[source.flavor]
    model_stat = store.stat_uri(source.artifact_uri)
    if model_stat is not None:
        with store.open_uri(source.artifact_uri, buffer_bytes=GRAPH_READ_BYTES) as reader:
            io, external = inspect_model(source, reader)
        files = [(source.artifact_uri, filename)] + [(source.sibling_uri(n), n) for n in external]
        stats = [model_stat] + [store.stat_uri(uri) for uri, _ in files[1:]]
        if all(stats):
            entries = [{"file": target, **stat} for (_, target), stat in zip(files, stats)]
            return Located("copy", files, entries, io)
    local = local_path(source.artifact_uri)
    if local is None and streamable(source.artifact_uri):
        return Located("stream", [(source.artifact_uri, filename)], None, None)
    if local is None:
        local = source.download(tmp)
    elif source.flavor == "torchscript":
        check_torchscript(local, source.model_uri)
    io, external = inspect_model(source, local)
    check_external_data(source, external)
    in_place = local_path(source.artifact_uri) is not None
    paths = [local] + [local.parent / n if in_place else source.download(local.parent, n) for n in external]
    files = [(str(path), target) for path, target in zip(paths, [filename] + external)]
    entries = [
        {"file": target, "sha256": sha256_file(path), "size": path.stat().st_size}
        for path, (_, target) in zip(paths, files)
    ]
    return Located("download", files, entries, io, complete_local_copy=local)


def _locate_directory(source: ModelSource, tmp: Path, config: "DeploymentConfig") -> Located:
    """A ``triton`` or ``python_function`` model: a downloaded folder, uploaded file by file
    (see :mod:`mlflow_triton.flavors.triton_source`, :mod:`mlflow_triton.flavors.pyfunc`)."""
    if source.flavor == "triton":
        files, io, build = triton_source.locate_triton(source, tmp)
    else:
        files, io, build = pyfunc_serving.locate_pyfunc(source, tmp, config)
    build("candidate", 1)  # a config Triton cannot take fails here, before any write
    return Located("download", files, triton_source.file_entries(files), io, build_config=build)


def local_path(uri: str) -> Path | None:
    """The file behind a local path or ``file://`` URI (used in place: nothing to download)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(uri) if parsed.scheme == "" else None


def transfer(
    store: ModelRepositoryStore, located: Located, source: ModelSource, prefix: str, spool: Path | None
) -> tuple[int, int]:
    """Copy, stream or upload the located files under ``prefix`` (``NAME/<version>/``):
    (bytes uploaded, bytes copied).

    Args:
        spool: for a stream, also keep a local copy in this folder, in the same pass (for the
            verification's local reference run: the only reason that path writes to disk).
    """
    uploaded = copied = 0
    if located.kind == "stream":
        uploaded = _stream_files(store, located, source, prefix, spool)
    for (origin, target), entry in zip(located.files, located.entries or []):
        if located.kind == "copy":
            copied += store.copy_from(origin, prefix + target) or 0
        elif located.kind == "download":
            uploaded += store.upload_file(
                Path(origin), prefix + target, progress_bar(entry["size"], f"upload {prefix}{target}")
            )
    verb = {"copy": "Copied", "stream": "Streamed", "download": "Uploaded"}[located.kind]
    name, _, version = prefix.rstrip("/").rpartition("/")
    logger.info("%s %s version %s (%d bytes) to %s", verb, name, version, copied or uploaded, store.url(prefix))
    return uploaded, copied


def check_external_data(source: ModelSource, needed: list[str]) -> None:
    """Raise unless every external-data file the graph names is in the MLflow model."""
    missing = sorted(set(needed) - set(source.companion_files())) if needed else []
    if missing:
        raise MlflowException.invalid_parameter_value(
            f"{source.model_uri}: {source.artifact_path} references external data {missing} "
            "that is not in the MLflow model. Log the model with its .data files (mlflow.onnx "
            "writes them next to model.onnx) or with save_as_external_data=False."
        )


def _stream_files(
    store: ModelRepositoryStore, located: Located, source: ModelSource, prefix: str, spool: Path | None
) -> int:
    model_uri, model_name = located.files[0]
    entries = [_stream_file(store, model_uri, prefix + model_name, spool / model_name if spool else None)]
    # The graph is read back from the uploaded copy: a few ranged GETs, no second pass.
    with store.open_object(prefix + model_name, buffer_bytes=GRAPH_READ_BYTES) as reader:
        located.io, external = inspect_model(source, reader)
    check_external_data(source, external)
    for name in external:
        located.files.append((source.sibling_uri(name), name))
        entries.append(_stream_file(store, source.sibling_uri(name), prefix + name, spool / name if spool else None))
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
