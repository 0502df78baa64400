"""Reference outputs of a published version, stored beside it: verification computed once.

When a version is verified against the model run locally (or against golden outputs logged
with the model), the inputs it was sent and the outputs it had to give are written into its
version folder in the golden-output format (:mod:`mlflow_triton.core.golden`)::

    NAME/<N>/mlflow-triton.reference/golden.json     + case-<i>.npz

A rollback, a repair or a replica that lost the model is then verified against them: no
torch, no onnxruntime, no MLflow, and not one byte of the model read by the publisher. They
are keyed by the served file's digest (``sha256`` or ``etag``): a folder whose model file is
not the one they were computed from is never verified with them. A best-effort cache: a
version without them is verified the way it was published.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping

from mlflow_triton.core.golden import MANIFEST_FILE, GoldenCases
from mlflow_triton.repository.layout import REFERENCE_FOLDER, version_prefix
from mlflow_triton.repository.store import ModelRepositoryStore

logger = logging.getLogger(__name__)
#: The manifest key naming the served file the outputs were computed from.
DIGEST_KEY = "model_file_digest"


def file_digest(entry: Mapping[str, Any]) -> str:
    """What identifies a served file's bytes in its provenance entry."""
    return str(entry.get("sha256") or entry.get("etag") or "")


def reference_prefix(name: str, version: int) -> str:
    return f"{version_prefix(name, version)}{REFERENCE_FOLDER}/"


def save_reference(store: ModelRepositoryStore, name: str, version: int, cases: GoldenCases, digest: str) -> None:
    """Write ``cases`` beside ``NAME/<version>/`` (callers hold the lease and checked it)."""
    prefix = reference_prefix(name, version)
    with tempfile.TemporaryDirectory(prefix="mlflow-triton-reference-") as tmp:
        manifest_path = cases.save(Path(tmp))
        manifest = json.loads(manifest_path.read_text())
        manifest[DIGEST_KEY] = digest
        manifest_path.write_text(json.dumps(manifest, indent=1))
        for path in sorted(Path(tmp).iterdir()):
            if path.name != MANIFEST_FILE:
                store.upload_file(path, prefix + path.name)
        store.write_bytes(prefix + MANIFEST_FILE, manifest_path.read_bytes())  # last: complete when present


def load_reference(store: ModelRepositoryStore, name: str, version: int, digest: str) -> GoldenCases | None:
    """The stored reference of ``NAME/<version>/`` computed from the file with ``digest``, or
    None (none stored, another file, or unreadable: verified the way it was published)."""
    prefix = reference_prefix(name, version)
    raw = store.read_bytes(prefix + MANIFEST_FILE)
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
        if not digest or manifest.get(DIGEST_KEY) != digest:
            return None
        with tempfile.TemporaryDirectory(prefix="mlflow-triton-reference-") as tmp:
            (Path(tmp) / MANIFEST_FILE).write_bytes(raw)
            for case in manifest["cases"]:
                store.download_file(prefix + case["file"], Path(tmp) / case["file"])
            return GoldenCases.load(Path(tmp))
    except Exception as err:  # a cache: the version is then verified as it was published
        logger.warning("Ignoring the stored reference of %s version %d: %s", name, version, err)
        return None
