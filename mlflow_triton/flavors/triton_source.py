"""What the repository receives for a ``triton``-flavor model (a logged Triton model directory).

The user's highest (or only) version folder becomes ``NAME/<next version>/``; the user's
``config.pbtxt`` is kept except for what the plugin owns (``name``, ``version_policy``). The
config is parsed as a ``ModelConfig`` before anything is written, and the logged config is
kept in the version folder (:data:`LOGGED_CONFIG_FILE`) so that an edited config is a new
version and provenance shows what was logged.

An ensemble (``platform: "ensemble"``) names its composing models by their repository names.
Each one is either a sibling folder of the ensemble in the logged MLflow model (published
first, each as its own verified rollout, under the step's ``model_name``) or a deployment
that already serves in the repository (left as it is). See :func:`publish_composing_models`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from tritonclient.grpc import model_config_pb2 as mc

from mlflow_triton.triton_config import model_config as mcfg
from mlflow_triton.flavors.triton import CONFIG_FILE, composing_model_names, read_config

if TYPE_CHECKING:
    from mlflow_triton.flavors.model_source import ModelSource
    from mlflow_triton.rollout.publisher import ModelPublisher, PublishResult
    from mlflow_triton.rollout.verification import Verifier

logger = logging.getLogger(__name__)

#: The config.pbtxt as logged, kept in the version folder (Triton ignores it).
LOGGED_CONFIG_FILE = "mlflow-triton.logged-config.pbtxt"
#: Flavors whose served files are a folder built here, not one model file.
DIRECTORY_FLAVORS = ("triton", "python_function")

#: ``(local path, target path inside the version folder)`` pairs to upload.
Files = list[tuple[str, str]]
#: Builds the config of one published version: ``(deployment name, version) -> ModelConfig``.
ConfigBuilder = Callable[[str, int], mc.ModelConfig]


def file_entries(files: Files) -> list[dict]:
    """Provenance entries (target, sha256, size) of local files, streamed to hash them."""
    from mlflow_triton.repository.transfer import sha256_file  # transfer imports this module

    return [
        {"file": target, "sha256": sha256_file(Path(path)), "size": Path(path).stat().st_size}
        for path, target in files
    ]


def files_under(folder: Path, prefix: str = "") -> Files:
    """Every file below ``folder`` as ``(path, prefix + relative path)``, sorted."""
    return [
        (str(path), prefix + path.relative_to(folder).as_posix())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]


def download_artifact(uri: str, destination: Path, model_uri: str) -> Path:
    """Download ``uri`` (a file or a folder, streamed to disk) into ``destination``."""
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination)))
    except Exception as err:
        raise MlflowException(
            f"Cannot download {uri} of {model_uri}: {err}", error_code=RESOURCE_DOES_NOT_EXIST
        ) from err


def _subfolders(uri: str, model_uri: str) -> list[str]:
    import mlflow

    try:
        return [info.path.rstrip("/").rpartition("/")[2] for info in mlflow.artifacts.list_artifacts(artifact_uri=uri) if info.is_dir]
    except Exception as err:
        raise MlflowException(
            f"Cannot list {uri} of {model_uri}: {err}", error_code=RESOURCE_DOES_NOT_EXIST
        ) from err


def io_from_config(config: mc.ModelConfig) -> mcfg.ModelIO:
    """Tensor specs of a user's config (full shapes: a -1 batch axis first when batched)."""
    batch = (-1,) if config.max_batch_size > 0 else ()

    def specs(tensors) -> tuple[mcfg.TensorSpec, ...]:
        return tuple(
            mcfg.TensorSpec(t.name, mc.DataType.Name(t.data_type), batch + tuple(int(d) for d in t.dims), t.name)
            for t in tensors
        )

    return mcfg.ModelIO(specs(config.input), specs(config.output))


def owned_fields_rewritten(config: mc.ModelConfig, name: str, version: int) -> mc.ModelConfig:
    """A copy of the user's config with only ``name`` and ``version_policy`` set by the plugin."""
    message = mc.ModelConfig()
    message.CopyFrom(config)
    message.name = name
    message.ClearField("version_policy")
    message.version_policy.specific.versions.append(version)
    return message


def locate_triton(source: "ModelSource", tmp: Path) -> tuple[Files, mcfg.ModelIO, ConfigBuilder]:
    """Download the config and the highest version folder of a ``triton``-flavor model.

    Returns:
        The files to upload (the logged config first), the tensors, the config builder.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for an invalid config.pbtxt or a model
            folder without a numbered version folder (ensembles may have none).
    """
    folder_uri = source.artifact_uri
    local = tmp / "triton-model"
    local.mkdir()
    download_artifact(f"{folder_uri}/{CONFIG_FILE}", local, source.model_uri)
    config = read_config(local)
    versions = sorted(int(n) for n in _subfolders(folder_uri, source.model_uri) if n.isdigit())
    files: Files = [(str(local / CONFIG_FILE), LOGGED_CONFIG_FILE)]
    if versions:
        version_dir = download_artifact(f"{folder_uri}/{versions[-1]}", local, source.model_uri)
        files += files_under(version_dir)
    elif not composing_model_names(config):
        raise MlflowException.invalid_parameter_value(
            f"{source.model_uri}: the Triton model folder {source.artifact_path!r} has no numbered "
            "version folder (e.g. 1/model.plan). Log the folder that holds config.pbtxt and 1/."
        )
    return files, io_from_config(config), lambda name, version: owned_fields_rewritten(config, name, version)


def publish_composing_models(
    publisher: "ModelPublisher", source: "ModelSource", make_verifier: Callable[[], "Verifier | None"]
) -> list["PublishResult"]:
    """Publish the composing models of an ensemble before the ensemble itself.

    Every step's model must be a sibling folder of the ensemble in the MLflow model, or a
    deployment already serving in the repository; this is checked before anything is written.
    Each sibling is published under the step's ``model_name`` as its own rollout (loaded and
    verified under a staging name before it serves; unchanged files upload nothing).

    Returns:
        The composing models' publish results (empty when ``source`` is not an ensemble).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE naming the steps that are neither logged
            nor deployed.
    """
    from dataclasses import replace

    import mlflow

    with mlflow.utils.file_utils.TempDir() as tmp:
        local = download_artifact(f"{source.artifact_uri}/{CONFIG_FILE}", Path(tmp.path()), source.model_uri)
        steps = composing_model_names(read_config(local.parent))
    if not steps:
        return []
    logged = set(_subfolders(source.download_uri, source.model_uri)) - {source.artifact_path}
    missing = [s for s in steps if s not in logged and publisher.read_state(s).serving_version is None]
    if missing:
        raise MlflowException.invalid_parameter_value(
            f"The ensemble {source.model_uri} names model(s) {missing} that are neither logged "
            "beside it nor deployed in the repository. Log them with "
            "triton_flavor.log_model(..., composing_models=[...]) or deploy them first."
        )
    results = []
    for step in steps:
        if step not in logged:
            logger.info("Ensemble step %s is already deployed: left as it is", step)
            continue
        step_source = replace(source, artifact_path=step, signature=None, saved_input_example=None)
        results.append(publisher.publish(step, step_source, verify=make_verifier()))
    return results


def restore_composing_models(publisher: "ModelPublisher", results: list["PublishResult"]) -> list[str]:
    """Serve again, on every replica, the versions the composing models served before this
    rollout (called when the ensemble itself was not published): the ensemble's previous
    version keeps the composing models it was verified with.

    A composing model that did not serve before keeps its new version (no client uses it
    but the refused ensemble). Failures are logged, not raised: the ensemble's error matters.

    Returns:
        ``"name: version"`` for each composing model restored.
    """
    from mlflow_triton.promotion.rollback import activate

    restored = []
    for result in results:
        if not result.changed or result.previous_version is None:
            continue
        try:
            activate(publisher, result.name, result.previous_version, expected_serving=result.version)
            restored.append(f"{result.name}: {result.previous_version}")
        except MlflowException as err:
            logger.error("Could not restore %s version %s: %s", result.name, result.previous_version, err.message)
    return restored


def is_directory_flavor(flavor: str | None) -> bool:
    return flavor in DIRECTORY_FLAVORS
