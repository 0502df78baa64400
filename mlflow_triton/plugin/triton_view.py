"""What the Triton replicas themselves say about deployments, with no repository configured.

MLflow's ``list`` and ``get`` take no ``-C``, so a user who only has the target URI must still
see what serves. Each replica's repository index (``POST /v2/repository/index``) lists every
model in the repository it reads, with, per version it tried to load, a state and Triton's
reason for a failure; the model config endpoint gives the tensors of a loaded model. When a
repository is configured the client adds provenance and history on top
(:meth:`~mlflow_triton.plugin.client.TritonDeploymentClient.get_deployment`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_triton.fleet.server import TritonCluster
from mlflow_triton.repository.layout import STAGING_PREFIX

#: ``{url: repository index, or the error reading it}`` as :meth:`TritonCluster.repository_index`.
Indexes = Mapping[str, "list[dict[str, Any]] | Exception"]


def replica_states(
    indexes: Indexes, name: str, versions: Iterable[int] | None = None
) -> dict[str, dict[str, Any]]:
    """Each replica's view of model ``name``.

    Args:
        indexes: each replica's repository index (or the error reading it).
        name: the model.
        versions: the versions the repository holds now. Triton's index keeps an entry for
            every version a replica ever loaded under ``name``, also those of deleted
            deployments of the same name; with ``versions`` those others are left out.
            None: every entry (what the replicas alone can say).

    Returns:
        ``{url: {"versions": {"3": "READY"}, "reason": "..."}}``; an empty ``versions`` when
        the replica knows the model but has not loaded it, ``{"state": "UNREACHABLE",
        "error": ...}`` for a replica that did not answer. ``reason`` is Triton's text for
        each listed version that is not READY (``"version 2: unloaded"``), joined by ``; ``.
    """
    wanted = None if versions is None else {str(v) for v in versions}
    servers: dict[str, dict[str, Any]] = {}
    for url, index in indexes.items():
        if isinstance(index, Exception):
            message = index.message if isinstance(index, MlflowException) else str(index)
            servers[url] = {"state": "UNREACHABLE", "error": message}
            continue
        entries = [
            e for e in index
            if e.get("name") == name and e.get("version") and (wanted is None or str(e["version"]) in wanted)
        ]  # fmt: skip
        entries.sort(key=lambda e: int(e["version"]))
        servers[url] = {
            "versions": {str(e["version"]): e.get("state") or "UNKNOWN" for e in entries},
            "reason": "; ".join(f"version {e['version']}: {e['reason']}" for e in entries if e.get("reason")),
        }
    return servers


def serving_version(servers: Mapping[str, Mapping[str, Any]]) -> int | None:
    """The version a request naming no version gets: Triton answers with the highest READY
    version, so the highest one READY on a replica (None: READY nowhere)."""
    ready = [
        int(version) for server in servers.values()
        for version, state in server.get("versions", {}).items() if state == "READY"
    ]  # fmt: skip
    return max(ready) if ready else None


def _known(indexes: Indexes) -> list[str]:
    names = {
        e.get("name") for index in indexes.values() if not isinstance(index, Exception) for e in index
    }  # fmt: skip
    return sorted(n for n in names if n and not n.startswith(STAGING_PREFIX))


def list_from_triton(cluster: TritonCluster) -> list[dict[str, Any]]:
    """Every model the replicas know (staging models left out), from their repository index.

    Returns:
        ``[{"name", "serving_version", "versions", "servers", "source": "triton"}]``.

    Raises:
        MlflowException: the error of the replicas when none of them answered.
    """
    indexes = cluster.repository_index()
    _raise_if_all_failed(indexes)
    deployments = []
    for name in _known(indexes):
        servers = replica_states(indexes, name)
        versions = sorted({int(v) for s in servers.values() for v in s.get("versions", {})})
        deployments.append({
            "name": name, "serving_version": serving_version(servers), "versions": versions,
            "servers": servers, "source": "triton",
        })  # fmt: skip
    return deployments


def describe_from_triton(cluster: TritonCluster, name: str) -> dict[str, Any]:
    """``get`` from the replicas alone: state per replica, Triton's reason for a failed load,
    and the model config (backend, batching, tensors) of a replica where it is loaded.

    Raises:
        MlflowException: RESOURCE_DOES_NOT_EXIST when no replica knows ``name``; the replicas'
            error when none answered.
    """
    indexes = cluster.repository_index()
    _raise_if_all_failed(indexes)
    if name not in _known(indexes):
        raise MlflowException(
            f"No model named {name!r} on Triton at {', '.join(cluster.urls)} (not in any replica's "
            "repository index). Add ?repository=s3://bucket/prefix to the target URI or set "
            "TRITON_MODEL_REPO to read the repository itself.",
            error_code=RESOURCE_DOES_NOT_EXIST,
        )
    servers = replica_states(indexes, name)
    serving = serving_version(servers)
    return {
        "name": name,
        "serving_version": serving,
        "versions": sorted({int(v) for s in servers.values() for v in s.get("versions", {})}),
        "servers": servers,
        "config": _loaded_config(cluster, name, servers) if serving is not None else None,
        "source": "triton",
    }


def _loaded_config(cluster: TritonCluster, name: str, servers: Mapping[str, Any]) -> dict[str, Any] | None:
    """The model config from the first replica where ``name`` is READY."""
    for url, server in servers.items():
        if "READY" in server.get("versions", {}).values():
            with cluster.server(url) as replica:
                return replica.model_config(name)
    return None


def _raise_if_all_failed(indexes: Indexes) -> None:
    errors = list(indexes.values())
    if errors and all(isinstance(e, Exception) for e in errors):
        raise errors[0]  # type: ignore[misc]
