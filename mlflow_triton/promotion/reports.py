"""What a reconciliation or a rollback did, per model: for logs, the CLI and ``--json``.

Reports are output: :meth:`ModelReport.describe` and the ``to_dict`` methods mask credentials
(:mod:`mlflow_triton.core.masking`) that an error text may carry (a tracking URI, a replica
URL with userinfo); the attributes keep the text as raised.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mlflow_triton.core.masking import mask_data, mask_secrets

Action = Literal["unchanged", "published", "failed", "interrupted"]

@dataclass
class ModelReport:
    """What one reconciliation did to one model.

    Attributes:
        action: ``unchanged``, ``published``, ``failed`` or ``interrupted`` (stopped by
            SIGINT/SIGTERM before its switch: nothing changed).
        registry_version: the registry version the alias points to (None if unresolved).
        previous_registry_version: the registry version that served before, per provenance.
        triton_version / previous_triton_version: repository (Triton) versions after / before.
        bytes_uploaded / bytes_copied: bytes sent to the repository (copied = S3 server-side).
        reloaded: replicas that had lost the serving version and loaded it again (verified).
        removed: version folders removed: left by an interrupted publish, or beyond
            ``keep_versions``.
        seconds: wall time of this model's reconciliation.
        error: the reason of a failure; for an interrupted model, what serves.
        refused: the failure is a refusal: a replica refused the candidate or it failed
            verification (the candidate was deleted; the previous version still serves).
    """

    registered_model: str
    alias: str
    deployment: str
    action: Action = "failed"
    registry_version: str | None = None
    previous_registry_version: str | None = None
    triton_version: int | None = None
    previous_triton_version: int | None = None
    bytes_uploaded: int = 0
    bytes_copied: int = 0
    reloaded: list[str] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    refused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return mask_data(asdict(self))

    def describe(self) -> str:
        """One line for logs and the CLI (credentials masked)."""
        return mask_secrets(self._describe())

    def _describe(self) -> str:
        head = f"{self.registered_model}@{self.alias} -> {self.deployment}"
        if self.action == "failed":
            return f"{head}: failed after {self.seconds:.1f}s: {self.error}"
        if self.action == "interrupted":
            return f"{head}: interrupted after {self.seconds:.1f}s: {self.error}"
        if self.action == "unchanged":
            extra = f"; reloaded on {', '.join(self.reloaded)}" if self.reloaded else ""
            extra += f"; removed versions {self.removed}" if self.removed else ""
            return (
                f"{head}: unchanged (registry version {self.registry_version} serves as Triton "
                f"version {self.triton_version}{extra})"
            )
        was = (
            f"was registry {self.previous_registry_version}, Triton {self.previous_triton_version}"
            if self.previous_triton_version is not None else "new deployment"
        )  # fmt: skip
        return (
            f"{head}: published registry version {self.registry_version} as Triton version "
            f"{self.triton_version} ({was}; {self.bytes_uploaded} bytes uploaded, "
            f"{self.bytes_copied} copied) in {self.seconds:.1f}s"
        )


@dataclass
class SyncReport:
    """One reconciliation round: a :class:`ModelReport` per model of the spec."""

    models: list[ModelReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no model failed or was interrupted."""
        return all(m.action not in ("failed", "interrupted") for m in self.models)

    @property
    def changed(self) -> bool:
        return any(m.action == "published" for m in self.models)

    @property
    def failures(self) -> list[ModelReport]:
        return [m for m in self.models if m.action == "failed"]

    @property
    def interrupted(self) -> list[ModelReport]:
        """The models a SIGINT/SIGTERM stopped before their switch."""
        return [m for m in self.models if m.action == "interrupted"]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "models": [m.to_dict() for m in self.models]}


@dataclass
class RollbackResult:
    """What :func:`rollback` did.

    Attributes:
        changed: False when ``version`` already served.
        registered_model / registered_version: registry coordinates of the version now served.
        alias_set: the alias moved to ``registered_version`` (``set_alias``), if any.
    """

    deployment: str
    version: int
    previous_version: int | None
    changed: bool
    registered_model: str | None = None
    registered_version: str | None = None
    alias_set: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return mask_data(asdict(self))
