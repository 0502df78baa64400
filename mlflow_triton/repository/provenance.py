"""Provenance: what a published version is, written beside it as ``NAME/<N>/mlflow-triton.json``.

Written last by the publisher (a version folder without it is an interrupted upload), read by
every later step: the no-op comparison (same files, same settings), rollback and repair (which
MLflow model to verify it with, and how), ``get`` and the audit trail. :class:`Provenance` is
the one typed form; :meth:`Provenance.to_dict` is the JSON written, the same keys as before
this class existed (``schema`` 1), so older repositories read unchanged::

    provenance = read_provenance(store, "fraud", 3)
    provenance.registry_uri        # "models:/fraud/8": the very registry version published
    provenance.files               # [{"file": "model.onnx", "sha256" | "etag": ..., "size": ...}, ...]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from mlflow_triton.repository.layout import PROVENANCE_FILE, version_prefix
from mlflow_triton.repository.store import ModelRepositoryStore

SCHEMA = 1
#: One file of a version as provenance records it: ``file``, ``size`` and ``sha256`` (bytes that
#: passed through this process) or ``etag`` (copied server-side).
FileEntry = dict[str, Any]
#: One tensor: ``mlflow`` (the name predict uses), ``triton`` (the config's name), ``datatype``.
TensorEntry = dict[str, str]


@dataclass(frozen=True)
class ModelOrigin:
    """Where a version came from in MLflow (the keys every provenance and history entry shares)."""

    model_uri: str
    source_uri: str
    registered_model: str | None = None
    registered_version: str | None = None
    run_id: str | None = None
    model_id: str | None = None

    @property
    def registry_uri(self) -> str:
        """The very model that was published: ``models:/NAME/VERSION`` when it came through the
        registry (an alias may point elsewhere by now), else the URI given."""
        if self.registered_model and self.registered_version:
            return f"models:/{self.registered_model}/{self.registered_version}"
        return self.model_uri

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(ModelOrigin)}


@dataclass(frozen=True)
class Provenance:
    """One published version.

    Attributes:
        name / version: the deployment and the repository version.
        flavor / backend: the flavor that planned it and the Triton backend serving it.
        origin: the MLflow model it was published from.
        files: the served files, the model file first (``artifact`` then ``external_data``
            in the JSON).
        tensors: ``{"inputs": [...], "outputs": [...]}`` of :data:`TensorEntry`.
        settings: the deployment settings that shaped the config (the no-op identity).
        config_pbtxt: the config as published (the version pinned in it).
        verification: how the version was verified (``inputs``: ``golden``, ``input_example``
            or ``zeros``; ``reference``: ``golden``, ``local`` or ``answers``).
        prerequisites: deployments published first from the same MLflow model (an
            ensemble's logged composing models); a rollback publishes them again.
    """

    name: str
    version: int
    flavor: str
    backend: str
    origin: ModelOrigin
    files: tuple[FileEntry, ...]
    tensors: Mapping[str, list[TensorEntry]]
    settings: Mapping[str, Any]
    config_pbtxt: str
    published_at: str = ""
    verification: Mapping[str, Any] = field(default_factory=dict)
    prerequisites: tuple[str, ...] = ()

    # Shortcuts for what most readers want.
    @property
    def registered_model(self) -> str | None:
        return self.origin.registered_model

    @property
    def registered_version(self) -> str | None:
        return self.origin.registered_version

    @property
    def model_uri(self) -> str:
        return self.origin.model_uri

    @property
    def source_uri(self) -> str:
        return self.origin.source_uri

    @property
    def registry_uri(self) -> str:
        return self.origin.registry_uri

    def holds(self, files: list[FileEntry], settings: Mapping[str, Any]) -> bool:
        """Whether this version holds exactly ``files`` (same digests) with ``settings``."""
        return list(self.files) == list(files) and dict(self.settings) == dict(settings)

    def with_origin(self, origin: ModelOrigin) -> "Provenance":
        return replace(self, origin=origin)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to the repository."""
        data = {
            "schema": SCHEMA, "name": self.name, "version": self.version, "flavor": self.flavor,
            "backend": self.backend, **self.origin.to_dict(), "artifact": self.files[0],
            "external_data": list(self.files[1:]), "tensors": dict(self.tensors),
            "settings": dict(self.settings), "config_pbtxt": self.config_pbtxt,
            "published_at": self.published_at,
        }  # fmt: skip
        if self.verification:
            data["verification"] = dict(self.verification)
        if self.prerequisites:
            data["prerequisites"] = list(self.prerequisites)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Provenance":
        origin = ModelOrigin(**{f.name: data.get(f.name) for f in fields(ModelOrigin)})
        files = (data.get("artifact") or {},) + tuple(data.get("external_data") or ())
        return cls(
            name=data["name"], version=int(data["version"]), flavor=data.get("flavor", "onnx"),
            backend=data.get("backend", ""), origin=origin, files=files,
            tensors=data.get("tensors") or {"inputs": [], "outputs": []},
            settings=data.get("settings") or {}, config_pbtxt=data.get("config_pbtxt", ""),
            published_at=data.get("published_at", ""), verification=data.get("verification") or {},
            prerequisites=tuple(data.get("prerequisites") or ()),
        )  # fmt: skip


def provenance_key(name: str, version: int) -> str:
    return version_prefix(name, version) + PROVENANCE_FILE


def parse_provenance(raw: bytes | None) -> Provenance | None:
    return Provenance.from_dict(json.loads(raw)) if raw else None


def read_provenance(store: ModelRepositoryStore, name: str, version: int) -> Provenance | None:
    """The provenance of ``NAME/<version>/``, or None (not published, or interrupted)."""
    return parse_provenance(store.read_bytes(provenance_key(name, version)))


def write_provenance(store: ModelRepositoryStore, provenance: Provenance) -> None:
    """Write it (callers hold the lease and check it first: see :mod:`mlflow_triton.rollout`)."""
    data = json.dumps(provenance.to_dict(), indent=2).encode()
    store.write_bytes(provenance_key(provenance.name, provenance.version), data)
