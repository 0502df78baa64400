"""What a rollout reports: the outcome of a publish or rollback, of a repair, and the race
a rollback can lose (:class:`ServingChanged`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ABORTED

from mlflow_triton.repository.provenance import Provenance


class ServingChanged(MlflowException):
    """Another publisher changed the serving version while we waited: compare again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=ABORTED)


@dataclass
class PublishResult:
    name: str
    version: int
    previous_version: int | None
    changed: bool
    bytes_uploaded: int = 0
    bytes_copied: int = 0
    flavor: str = ""
    provenance: Provenance | None = None
    pruned: list[int] = field(default_factory=list)
    verified: bool = False
    #: The prerequisites published first (an ensemble's composing models).
    composing: list["PublishResult"] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["provenance"] = self.provenance.to_dict() if self.provenance else None
        return data


@dataclass
class RepairResult:
    """What :meth:`ModelPublisher.repair` did: replicas reloaded, version folders removed."""

    reloaded: list[str] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
