"""The contract every flavor implements, and the plan it returns.

A flavor turns a resolved MLflow model (:class:`~mlflow_triton.flavors.source.ModelSource`)
and the deployment settings into a :class:`PublishPlan`: the files to move, how their tensors
are known, the config to generate, the warmup, how the version is verified, and what must serve
before it. Publish, rollout, repair and rollback execute plans; they never ask which flavor a
model is (MLflow's own flavor modules, dispatched once through ``loader_module``, are the
pattern). The flavors, in order of preference, are in :mod:`mlflow_triton.flavors.registry`::

    source = resolve_model("models:/fraud/3")
    plan = source.flavor.plan(source, settings, workdir)
    plan.files, plan.io, plan.config("fraud", 4, plan.io, None)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Mapping, Protocol, Sequence

import numpy as np
from mlflow.exceptions import MlflowException
from tritonclient.grpc import model_config_pb2 as mc

from mlflow_triton.triton_config.model_config import GenerationSettings
from mlflow_triton.triton_config.tensors import ModelIO

if TYPE_CHECKING:
    from mlflow_triton.flavors.source import LoggedModel, ModelSource
    from mlflow_triton.triton_config.warmup import WarmupPlan


class PlanSettings(GenerationSettings, Protocol):
    """The deployment settings a flavor reads (``DeploymentConfig`` has them)."""

    python_env: str | None


@dataclass(frozen=True)
class SourceFile:
    """One file to publish: where its bytes are (an artifact URI or a local path) and its path
    inside the version folder."""

    origin: str
    target: str


@dataclass(frozen=True)
class Inspection:
    """What a model file says about itself: its tensors, and the files beside it that it needs
    (ONNX external data), already checked to be in the MLflow model."""

    io: ModelIO
    companions: tuple[SourceFile, ...] = ()


#: Reads a model file (a local path, or a seekable reader of a remote or uploaded copy) without
#: its weights. Raises INVALID_PARAMETER_VALUE for a file the flavor cannot serve.
Inspector = Callable[["Path | BinaryIO"], Inspection]
#: The config.pbtxt of one published version: ``(deployment, version, tensors, warmup)``.
ConfigBuilder = Callable[[str, int, ModelIO, "WarmupPlan | None"], mc.ModelConfig]


@dataclass(frozen=True)
class Prerequisite:
    """A model that must serve before this one (an ensemble's composing model): published
    first, as its own verified rollout, under ``deployment``."""

    deployment: str
    source: "ModelSource"


@dataclass
class PublishPlan:
    """Everything a publish needs to know about one model, decided by its flavor.

    Attributes:
        source: the model and the flavor that made this plan.
        files: the files to move, the model file first.
        io: the tensors; None when only the model file's bytes tell (``inspect`` reads them,
            from wherever the file can be read cheaply, or from the uploaded copy).
        inspect: reads ``io`` and the companion files from the model file (single-file flavors).
        config: builds the config.pbtxt of a version.
        warmup_count: warmup requests per load for a generated config; 0 when the config is the
            user's own (no generated warmup).
        prerequisites: what must serve first (an ensemble's logged composing models).
        requires: deployments that must already serve in the repository (an ensemble's steps
            that are not logged with it).
    """

    source: "ModelSource"
    files: list[SourceFile]
    io: ModelIO | None
    config: ConfigBuilder
    inspect: Inspector | None = None
    warmup_count: int = 1
    prerequisites: tuple[Prerequisite, ...] = field(default_factory=tuple)
    requires: tuple[str, ...] = ()

    @property
    def flavor(self) -> "Flavor":
        return self.source.flavor

    @property
    def model(self) -> "LoggedModel":
        return self.source.model


class Flavor(Protocol):
    """One way of serving an MLflow model on Triton.

    Attributes:
        name: what provenance records and ``-C flavor=`` names.
        aliases: other accepted spellings (MLflow's module names).
        reference_runtime: the Python module that runs the served file locally, for the
            smoke test's reference (None: Triton's answers are checked without a reference).
        execution_accelerators: whether ``-C accelerator`` applies (the backend has them).
    """

    name: str
    aliases: tuple[str, ...]
    reference_runtime: str | None
    execution_accelerators: bool

    def artifact_path(self, flavors: Mapping[str, Mapping]) -> str | None:
        """Where this flavor's files are in a model directory with these MLmodel ``flavors``
        (None: the model does not have this flavor)."""

    def plan(self, source: "ModelSource", settings: PlanSettings, workdir: Path) -> PublishPlan:
        """The plan for ``source``; may download into ``workdir``. Raises
        INVALID_PARAMETER_VALUE, naming the fix, for a model it cannot serve, before anything
        is written to the repository."""

    def run_reference(
        self, model_file: Path, inputs: Sequence[tuple[str, np.ndarray]], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run the served file locally (only when ``reference_runtime`` is set): ``inputs`` by
        Triton name in config order, outputs by Triton name."""


def refuse_accelerator(flavor: Flavor, settings: PlanSettings, why: str) -> None:
    """Refuse ``-C accelerator`` for a flavor that cannot apply it (``why`` says so)."""
    if settings.accelerator != "none" and not flavor.execution_accelerators:
        raise MlflowException.invalid_parameter_value(
            f"accelerator={settings.accelerator} is not available for {flavor.name} models: {why}"
        )


def local_files(folder: Path, prefix: str = "") -> list[SourceFile]:
    """Every file below a local ``folder`` as a :class:`SourceFile` targeted at ``prefix`` +
    its relative path, sorted."""
    return [
        SourceFile(str(path), prefix + path.relative_to(folder).as_posix())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]
