"""An MLflow model resolved for publishing, and the flavor chosen for it.

:func:`~mlflow_triton.flavors.registry.resolve_model` reads only the MLmodel file of a model URI (``models:/name/version``,
``models:/name@alias``, ``models:/<model_id>``, ``runs:/...``, an artifact URI or a local path),
then chooses the flavor once (:mod:`mlflow_triton.flavors.registry`)::

    source = resolve_model("models:/fraud@production")     # mlflow_triton.flavors.registry
    source.flavor.name       # "onnx" (preferred), "torchscript", "triton" or "python_function"
    plan = source.flavor.plan(source, settings, workdir)   # what the publish moves and generates

:class:`LoggedModel` knows nothing of flavors: its registry coordinates, signature, input
example and golden outputs are the same whatever is served.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_triton.core.golden import GOLDEN_DIR, MANIFEST_FILE, GoldenCases
from mlflow_triton.repository.artifacts import download_artifact, list_artifact_folder, local_path
from mlflow_triton.repository.provenance import ModelOrigin

if TYPE_CHECKING:
    from mlflow_triton.flavors.base import Flavor

_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")


@dataclass(frozen=True)
class LoggedModel:
    """An MLflow model as logged: where it is, what the registry says, and what it carries.

    Attributes:
        model_uri: the URI the user gave.
        download_uri: the artifact location of the model directory.
        flavors: the MLmodel's ``flavors`` section.
        signature: the MLflow signature, if logged.
        saved_input_example: the MLmodel's input example info, if one was logged.
        carries_examples: False for a part of a logged model (an ensemble step), whose
            signature, input example and golden outputs are the whole model's, not its own.
    """

    model_uri: str
    download_uri: str
    flavors: Mapping[str, Mapping[str, Any]]
    signature: Any = None
    registered_model: str | None = None
    registered_version: str | None = None
    run_id: str | None = None
    model_id: str | None = None
    saved_input_example: Mapping[str, Any] | None = field(default=None, repr=False)
    carries_examples: bool = True

    def uri(self, path: str) -> str:
        """The artifact URI of ``path`` inside the model directory."""
        base = self.download_uri.rstrip("/")
        return f"{base}/{path.strip('/')}" if path.strip("/") else base

    def part(self) -> "LoggedModel":
        """The same model seen from one of its parts (an ensemble step): no examples of its own."""
        return replace(self, signature=None, saved_input_example=None, carries_examples=False)

    def list_folder(self, path: str = "") -> tuple[list[str], list[str]]:
        """Sub-folders and files of ``path`` inside the model directory."""
        return list_artifact_folder(self.uri(path), self.model_uri)

    def download(self, path: str, destination: Path) -> Path:
        """Download ``path`` (a file or a folder) of the model directory into ``destination``."""
        return download_artifact(self.uri(path), destination, self.model_uri)

    def load_input_example(self) -> Any:
        """The input example logged with the model, or None; only the example file is fetched.

        Raises:
            MlflowException: RESOURCE_DOES_NOT_EXIST when it cannot be read.
        """
        from mlflow.models import Model

        if not self.saved_input_example or not self.carries_examples:
            return None
        model = Model(saved_input_example_info=dict(self.saved_input_example), signature=self.signature)
        try:
            return model.load_input_example(self.download_uri)
        except Exception as err:
            raise MlflowException(
                f"Cannot read the input example of {self.model_uri}: {err}", error_code=RESOURCE_DOES_NOT_EXIST
            ) from err

    def golden_cases(self, destination: Path) -> GoldenCases | None:
        """The golden outputs logged with the model (:mod:`mlflow_triton.core.golden`), or None."""
        if not self.carries_examples:
            return None
        _, files = self.list_folder(GOLDEN_DIR)
        if MANIFEST_FILE not in files:
            return None
        return GoldenCases.load(self.download(GOLDEN_DIR, destination))

    def origin(self, source_uri: str) -> ModelOrigin:
        return ModelOrigin(
            self.model_uri, source_uri, self.registered_model, self.registered_version, self.run_id, self.model_id
        )


@dataclass(frozen=True)
class ModelSource:
    """What a publish serves: a logged model, the flavor chosen for it, and where in the model
    directory that flavor's files are (``artifact_path``: a file, or a folder)."""

    model: LoggedModel
    flavor: "Flavor"
    artifact_path: str

    @property
    def artifact_uri(self) -> str:
        return self.model.uri(self.artifact_path)

    @property
    def model_uri(self) -> str:
        return self.model.model_uri

    def sibling_uri(self, name: str) -> str:
        """URI of a file next to the served file (ONNX external data)."""
        folder = self.artifact_path.rpartition("/")[0]
        return self.model.uri(f"{folder}/{name}" if folder else name)

    def origin(self) -> ModelOrigin:
        return self.model.origin(self.artifact_uri)


def _registry_lookup(model_uri: str) -> dict[str, Any]:
    """download_uri and registry coordinates of a registry URI; the URI itself otherwise."""
    from mlflow import MlflowClient

    match = _REGISTRY_URI.match(model_uri)
    if not match:
        if model_uri.startswith("models:/"):  # a logged model: models:/<model_id>
            from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

            try:
                return {"download_uri": ModelsArtifactRepository.get_underlying_uri(model_uri)}
            except MlflowException as err:
                raise MlflowException(
                    f"Cannot resolve {model_uri}: {err.message}", error_code=RESOURCE_DOES_NOT_EXIST
                ) from err
        local = local_path(model_uri)
        return {"download_uri": str(local.expanduser().resolve()) if local is not None else model_uri}
    client = MlflowClient()
    name = match["name"]
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"])
        else:
            version = client.get_model_version(name, match["version"])
        download_uri = client.get_model_version_download_uri(name, version.version)
    except MlflowException as err:
        raise MlflowException(
            f"Cannot resolve {model_uri} in the MLflow Model Registry: {err.message}",
            error_code=RESOURCE_DOES_NOT_EXIST,
        ) from err
    return {
        "download_uri": download_uri, "registered_model": name, "registered_version": str(version.version),
        "run_id": version.run_id, "model_id": getattr(version, "model_id", None),
    }  # fmt: skip


def read_logged_model(model_uri: str) -> LoggedModel:
    """Read the MLmodel of ``model_uri`` (nothing else is fetched).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for an empty URI; RESOURCE_DOES_NOT_EXIST if
            the model cannot be found.
    """
    from mlflow.models import Model

    if not model_uri or not isinstance(model_uri, str):
        raise MlflowException.invalid_parameter_value(
            "A model URI is required, e.g. models:/name/1, models:/name@alias or runs:/id/model."
        )
    found = _registry_lookup(model_uri)
    try:
        with tempfile.TemporaryDirectory(prefix="mlflow-triton-") as tmp:
            mlmodel = Model.load(download_artifact(f"{found['download_uri'].rstrip('/')}/MLmodel", Path(tmp), model_uri))
    except Exception as err:
        reason = err.message if isinstance(err, MlflowException) else f"{type(err).__name__}: {err}"
        raise MlflowException(
            f"Cannot read the MLmodel file of {model_uri} ({found['download_uri']}): {reason} Check "
            "the URI and that MLFLOW_TRACKING_URI points at the server that holds it.",
            error_code=RESOURCE_DOES_NOT_EXIST,
        ) from err
    return LoggedModel(
        model_uri=model_uri, download_uri=found["download_uri"], flavors=mlmodel.flavors,
        signature=mlmodel.signature, registered_model=found.get("registered_model"),
        registered_version=found.get("registered_version"),
        run_id=found.get("run_id") or mlmodel.run_id,
        model_id=found.get("model_id") or getattr(mlmodel, "model_id", None),
        saved_input_example=mlmodel.saved_input_example_info,
    )  # fmt: skip
