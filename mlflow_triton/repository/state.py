"""What the repository says about a deployment: ``config.pbtxt`` and the folder listing, read
at once, then the serving version's provenance (two round trips of latency, three requests).

Layout of deployment ``NAME`` (Triton's repository layout plus files of ours that Triton
ignores)::

    <repo>/NAME/config.pbtxt                 version_policy pins the serving version
    <repo>/NAME/<N>/model.onnx | model.pt
    <repo>/NAME/<N>/mlflow-triton.json       provenance: MLflow URI, registry version, hashes
    <repo>/NAME/mlflow-triton-history.json   which version served when (mlflow_triton.repository.history)
    <repo>/NAME/.mlflow-triton.lease         held while a publisher writes (mlflow_triton.repository.lease)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException

from mlflow_triton.repository.concurrency import concurrently
from mlflow_triton.repository.lease import LEASE_FILE
from mlflow_triton.repository.store import ModelRepositoryStore
from mlflow_triton.settings.deployment import validate_model_name
from mlflow_triton.triton_config import model_config as mcfg

CONFIG_FILE = "config.pbtxt"
PROVENANCE_FILE = "mlflow-triton.json"


@dataclass
class DeploymentState:
    """What the repository says about one deployment.

    Attributes:
        versions: the numbered version folders, complete or not.
        serving_version: the version ``config.pbtxt`` pins (None: not deployed).
        provenance: the serving version's ``mlflow-triton.json``.
        leased: a lease object is present: a publisher is at work, or died and left work to
            repair (seen in the listing at no extra cost).
    """

    name: str
    config: Any  # model_config_pb2.ModelConfig | None
    config_bytes: bytes | None
    versions: list[int]
    serving_version: int | None
    provenance: dict[str, Any] | None
    leased: bool = False

    @property
    def exists(self) -> bool:
        return self.config_bytes is not None


def read_state(store: ModelRepositoryStore, name: str) -> DeploymentState:
    """``name``'s state. The config and the listing are independent reads and run at once;
    the provenance needs the version the config pins.

    Unlocked, the two may be taken in either order, so a version pinned by a concurrent
    publisher can be missing from ``versions`` (as in a
    :class:`~mlflow_triton.repository.snapshot.RepositorySnapshot`, which lists first); a
    writer reads the state under the deployment's lease, where nobody else writes.
    """
    validate_model_name(name)
    config_bytes, (folders, files) = concurrently(
        lambda: store.read_bytes(f"{name}/{CONFIG_FILE}"), lambda: store.list_dir(f"{name}/")
    )
    versions = sorted(int(f) for f in folders if f.isdigit())
    config = mcfg.parse_pbtxt(config_bytes) if config_bytes is not None else None
    serving = mcfg.serving_versions(config) if config is not None else []
    serving_version = serving[-1] if serving else (versions[-1] if versions and config else None)
    provenance = read_provenance(store, name, serving_version) if serving_version else None
    return DeploymentState(name, config, config_bytes, versions, serving_version, provenance, LEASE_FILE in files)


def read_provenance(store: ModelRepositoryStore, name: str, version: int) -> dict[str, Any] | None:
    raw = store.read_bytes(f"{name}/{version}/{PROVENANCE_FILE}")
    return json.loads(raw) if raw else None


def list_deployments(store: ModelRepositoryStore) -> list[DeploymentState]:
    """The state of every folder in the repository that is a deployment (has a config.pbtxt;
    staging models and other folders whose names are not deployment names are skipped)."""
    folders, _ = store.list_dir("")
    states = (read_state(store, f) for f in folders if _is_deployment_name(f))
    return [state for state in states if state.exists]


def _is_deployment_name(folder: str) -> bool:
    try:
        validate_model_name(folder)
        return True
    except MlflowException:
        return False
