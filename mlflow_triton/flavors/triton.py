"""The ``triton`` MLflow flavor: a complete Triton model directory logged as an MLflow model.

Users who already have what Triton serves (a TensorRT plan, an OpenVINO model, a Python-backend
``model.py``, an ensemble) log the directory itself, in the layout NVIDIA's
``mlflow-triton-plugin`` logs, so models logged by either tool deploy with either::

    <artifact>/MLmodel                 flavors: {triton: {data: <folder>}}
    <artifact>/<folder>/config.pbtxt   the user's ModelConfig, kept as written
    <artifact>/<folder>/<N>/...        numbered version folders with the backend's files
    <artifact>/<step>/config.pbtxt     (ensembles) one sibling folder per composing model

Usage::

    from mlflow_triton.flavors import triton as triton_flavor
    info = triton_flavor.log_model("repo/my_model", name="model")
    local_dir = triton_flavor.load_model(info.model_uri)  # the model folder, downloaded

Deployment (:class:`TritonFlavor`, the ``triton`` entry of :mod:`mlflow_triton.flavors.registry`)
publishes the highest version folder as the deployment's next version; the plugin rewrites only
``name`` and ``version_policy``, and keeps the logged config in the version folder
(``mlflow-triton.logged-config.pbtxt``), so an edited config is a new version and provenance
shows what was logged. An ensemble (``platform: "ensemble"``) names its composing models by
their repository names: each is a sibling folder of the ensemble in the logged MLflow model
(the plan's prerequisites: published first, each as its own verified rollout, under the
step's ``model_name``) or a deployment already serving in the repository.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from google.protobuf import text_format
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelInputExample, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME, ModelInfo
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS
from mlflow.types.schema import Schema, TensorSpec
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import triton_to_np_dtype

from mlflow_triton.flavors.base import (
    PlanSettings,
    Prerequisite,
    PublishPlan,
    SourceFile,
    local_files,
    refuse_accelerator,
)  # fmt: skip
from mlflow_triton.flavors.source import ModelSource
from mlflow_triton.repository.artifacts import download_artifact
from mlflow_triton.repository.layout import CONFIG_FILE, LOGGED_CONFIG_FILE
from mlflow_triton.triton_config.model_config import with_owned_fields
from mlflow_triton.triton_config.tensors import io_from_config, protocol_dtype

FLAVOR_NAME = "triton"
ENSEMBLE_PLATFORM = "ensemble"


def read_config(model_dir: str | os.PathLike[str]) -> mc.ModelConfig:
    """Parse ``<model_dir>/config.pbtxt`` as a ``ModelConfig``.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE when it is missing or not a valid
            ModelConfig (the parser's line and column are in the message).
    """
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise MlflowException.invalid_parameter_value(
            f"{model_dir} is not a Triton model directory: it has no {CONFIG_FILE}. Give the folder "
            "that holds config.pbtxt and the numbered version folders (e.g. repo/my_model)."
        )
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as err:
        raise MlflowException.invalid_parameter_value(
            f"{path} is not a valid Triton ModelConfig: {err}. Fix the field it names "
            "(see Triton's model_config.proto)."
        ) from err


def version_folders(model_dir: str | os.PathLike[str]) -> list[int]:
    """The numbered version folders of a Triton model directory, ascending."""
    return sorted(int(p.name) for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit())


def composing_model_names(config: mc.ModelConfig) -> list[str]:
    """The models an ensemble's steps name, in step order, without repeats (empty otherwise)."""
    if config.platform != ENSEMBLE_PLATFORM:
        return []
    return list(dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step))


def signature_from_config(config: mc.ModelConfig) -> ModelSignature:
    """The MLflow signature of a Triton config: one tensor per input/output, named as in the
    config, numpy dtypes from ``tritonclient.utils``, a leading -1 batch axis when batched.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for a data type numpy cannot hold (BF16).
    """

    def schema(tensors: Any, kind: str) -> Schema:
        specs = []
        for tensor in tensors:
            protocol = protocol_dtype(mc.DataType.Name(tensor.data_type))
            dtype = triton_to_np_dtype(protocol)
            if dtype is None:
                raise MlflowException.invalid_parameter_value(
                    f"{kind} {tensor.name!r} has data type {protocol}, which has no numpy type; "
                    "pass signature=... explicitly."
                )
            dtype = np.dtype(object) if protocol == "BYTES" else np.dtype(dtype)
            shape = ([-1] if config.max_batch_size > 0 else []) + [int(d) for d in tensor.dims]
            specs.append(TensorSpec(dtype, tuple(shape), tensor.name))
        return Schema(specs)

    return ModelSignature(schema(config.input, "input"), schema(config.output, "output"))


def save_model(
    triton_model_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    mlflow_model: Model | None = None,
    composing_models: Sequence[str | os.PathLike[str]] = (),
    signature: ModelSignature | None = None,
    input_example: ModelInputExample | None = None,
    **_: Any,
) -> None:
    """Save a Triton model directory as an MLflow model at ``path``.

    The directory is copied to ``path/<its folder name>`` and recorded as the flavor's
    ``data`` (NVIDIA's layout). An ensemble's composing models are copied beside it.

    Args:
        triton_model_path: the folder holding ``config.pbtxt`` and numbered version folders.
        path: where the MLflow model is written (must not exist).
        mlflow_model: the model this flavor is added to (a new one by default).
        composing_models: for an ensemble, the model folders its steps name (each named as
            the step's ``model_name``); steps not given must already be deployed.
        signature: default: from the config's inputs and outputs.
        input_example: sent by the smoke test before the model serves (default: zeros).

    Raises:
        MlflowException: RESOURCE_ALREADY_EXISTS if ``path`` exists; INVALID_PARAMETER_VALUE
            for a missing or invalid config.pbtxt, before anything is written.
    """
    from mlflow.models.utils import _save_example

    source = Path(triton_model_path).resolve()
    config = read_config(source)
    folders = [Path(p).resolve() for p in composing_models]
    for folder in folders:
        read_config(folder)
    names = [source.name] + [f.name for f in folders]
    if len(set(names)) != len(names):
        raise MlflowException.invalid_parameter_value(
            f"Model folders must have distinct names, got {names}."
        )
    target = Path(path).resolve()
    if target.exists():
        raise MlflowException(f"Path '{target}' already exists", error_code=RESOURCE_ALREADY_EXISTS)
    target.mkdir(parents=True)
    for folder in [source, *folders]:
        shutil.copytree(folder, target / folder.name)
    mlflow_model = mlflow_model or Model()
    if signature is None and config.input and config.output:  # else Triton auto-completes them
        signature = signature_from_config(config)
    mlflow_model.signature = signature
    if input_example is not None:
        _save_example(mlflow_model, input_example, str(target))
    mlflow_model.add_flavor(FLAVOR_NAME, data=source.name)
    mlflow_model.save(str(target / MLMODEL_FILE_NAME))


def log_model(
    triton_model_path: str | os.PathLike[str],
    name: str = "model",
    composing_models: Sequence[str | os.PathLike[str]] = (),
    signature: ModelSignature | None = None,
    input_example: ModelInputExample | None = None,
    registered_model_name: str | None = None,
    **kwargs: Any,
) -> ModelInfo:
    """Log a Triton model directory to the active run (see :func:`save_model`).

    Returns:
        The ``ModelInfo`` of the logged model (``.model_uri`` deploys it).
    """
    return Model.log(
        artifact_path=None,
        name=name,
        flavor=sys.modules[__name__],
        triton_model_path=triton_model_path,
        composing_models=composing_models,
        signature=signature,
        input_example=input_example,
        registered_model_name=registered_model_name,
        **kwargs,
    )


def load_model(model_uri: str, dst_path: str | None = None) -> str:
    """Download the logged Triton model directory; returns its local path.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE if the model has no ``triton`` flavor.
    """
    root = str(download_artifact(model_uri, Path(dst_path) if dst_path else None, model_uri))
    flavors = Model.load(os.path.join(root, MLMODEL_FILE_NAME)).flavors
    if FLAVOR_NAME not in flavors:
        raise MlflowException.invalid_parameter_value(
            f"{model_uri} has no {FLAVOR_NAME!r} flavor (it has {sorted(flavors)})."
        )
    return os.path.join(root, flavors[FLAVOR_NAME]["data"])


class TritonFlavor:
    """See the module docstring."""

    name = FLAVOR_NAME
    aliases: tuple[str, ...] = ()
    reference_runtime = None
    execution_accelerators = False

    def artifact_path(self, flavors: Mapping[str, Mapping]) -> str | None:
        return str(flavors[FLAVOR_NAME].get("data", "")).strip("/") if FLAVOR_NAME in flavors else None

    def plan(self, source: ModelSource, settings: PlanSettings, workdir: Path) -> PublishPlan:
        """Download the config and the highest version folder; the config is the user's.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE for an invalid config.pbtxt, or a model
                folder without a numbered version folder (ensembles may have none).
        """
        refuse_accelerator(
            self, settings, "the model serves its own config.pbtxt; set optimization "
            "{ execution_accelerators { ... } } there, or remove -C accelerator.",
        )
        local = workdir / "triton-model"
        source.model.download(f"{source.artifact_path}/{CONFIG_FILE}", local)
        config = read_config(local)
        folders, _ = source.model.list_folder(source.artifact_path)
        versions = sorted(int(n) for n in folders if n.isdigit())
        files = [SourceFile(str(local / CONFIG_FILE), LOGGED_CONFIG_FILE)]
        steps = composing_model_names(config)
        if versions:
            files += local_files(source.model.download(f"{source.artifact_path}/{versions[-1]}", local))
        elif not steps:
            raise MlflowException.invalid_parameter_value(
                f"{source.model_uri}: the Triton model folder {source.artifact_path!r} has no numbered "
                "version folder (e.g. 1/model.plan). Log the folder that holds config.pbtxt and 1/."
            )
        logged = set(source.model.list_folder()[0]) - {source.artifact_path} if steps else set()
        return PublishPlan(
            source=source,
            files=files,
            io=io_from_config(config),
            config=lambda name, version, io, warmup: with_owned_fields(config, name, version),
            warmup_count=0,
            prerequisites=tuple(
                Prerequisite(step, ModelSource(source.model.part(), self, step)) for step in steps if step in logged
            ),
            requires=tuple(step for step in steps if step not in logged),
        )

    def run_reference(self, model_file: Path, inputs: Any, outputs: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError("a Triton model directory has no local reference runtime")


TRITON = TritonFlavor()
