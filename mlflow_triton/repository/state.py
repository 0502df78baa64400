"""What the repository says about a deployment: ``config.pbtxt`` and the folder listing, read
at once, then the serving version's provenance (two round trips of latency, three requests).

The layout is in :mod:`mlflow_triton.repository.layout`; many deployments at once are read
from one listing by :mod:`mlflow_triton.repository.snapshot`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mlflow_triton.repository.concurrency import concurrently
from mlflow_triton.repository.layout import (
    CONFIG_FILE,
    LEASE_FILE,
    is_deployment_name,
    validate_model_name,
)  # fmt: skip
from mlflow_triton.repository.provenance import Provenance, read_provenance
from mlflow_triton.repository.store import ModelRepositoryStore
from mlflow_triton.triton_config import model_config as mcfg


@dataclass
class DeploymentState:
    """What the repository says about one deployment.

    Attributes:
        versions: the numbered version folders, complete or not.
        serving_version: the version ``config.pbtxt`` pins (None: not deployed).
        provenance: the serving version's provenance.
        leased: a lease object is present: a publisher is at work, or died and left work to
            repair (seen in the listing at no extra cost).
    """

    name: str
    config: Any  # model_config_pb2.ModelConfig | None
    config_bytes: bytes | None
    versions: list[int]
    serving_version: int | None
    provenance: Provenance | None
    leased: bool = False

    @property
    def exists(self) -> bool:
        return self.config_bytes is not None

    @classmethod
    def from_listing(
        cls, name: str, config_bytes: bytes | None, folders: set[str] | list[str], files: set[str] | list[str],
        provenance_of: Callable[[int], Provenance | None],
    ) -> "DeploymentState":  # fmt: skip
        """The state from a listing of ``NAME/`` (folders and files) and its config.pbtxt;
        ``provenance_of(version)`` reads the serving version's provenance."""
        versions = sorted(int(f) for f in folders if f.isdigit())
        config = mcfg.parse_pbtxt(config_bytes) if config_bytes is not None else None
        serving = mcfg.serving_versions(config) if config is not None else []
        serving_version = serving[-1] if serving else (versions[-1] if versions and config else None)
        provenance = provenance_of(serving_version) if serving_version else None
        return cls(name, config, config_bytes, versions, serving_version, provenance, LEASE_FILE in files)


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
    return DeploymentState.from_listing(
        name, config_bytes, folders, files, lambda version: read_provenance(store, name, version)
    )


def list_deployments(store: ModelRepositoryStore) -> list[DeploymentState]:
    """The state of every folder in the repository that is a deployment (has a config.pbtxt;
    staging models and other folders whose names are not deployment names are skipped)."""
    folders, _ = store.list_dir("")
    states = (read_state(store, f) for f in folders if is_deployment_name(f))
    return [state for state in states if state.exists]
