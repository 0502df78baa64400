"""Resolve an MLflow model URI to the one file Triton serves, its signature and its provenance.

Accepts ``models:/name/version``, ``models:/name@alias``, ``models:/<model_id>``, ``runs:/...``,
artifact URIs (``s3://...``) and local paths. Only the MLmodel file is read up front; the model
file itself is fetched by :meth:`ModelSource.download` (or copied server-side by the store)::

    source = resolve_model("models:/fraud@production", flavor=None)
    source.flavor          # "onnx" (preferred) or "torchscript"
    path = source.download(tmp_dir)
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_triton.settings.deployment import FLAVOR_ALIASES, FLAVORS

_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")
_FLAVOR_ALIASES = {**{flavor: flavor for flavor in FLAVORS}, **FLAVOR_ALIASES}
_TORCHSCRIPT_FILE = "model.pth"
#: Files MLflow writes into every model directory (never part of what Triton serves).
_MLFLOW_FILES = {
    "MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "constraints.txt",
    "input_example.json", "serving_input_example.json", "registered_model_meta",
}  # fmt: skip


@dataclass
class ModelSource:
    """An MLflow model resolved for publishing.

    Attributes:
        model_uri: the URI the user gave.
        download_uri: the artifact location of the model directory.
        flavor: ``onnx`` or ``torchscript``.
        artifact_path: path of the served file inside the model directory.
        signature: the MLflow signature, if logged.
        registered_model / registered_version: registry coordinates, when resolved through it.
        run_id / model_id: the MLflow run and logged model that produced it.
    """

    model_uri: str
    download_uri: str
    flavor: str
    artifact_path: str
    signature: Any = None
    registered_model: str | None = None
    registered_version: str | None = None
    run_id: str | None = None
    model_id: str | None = None
    saved_input_example: dict | None = field(default=None, repr=False)

    @property
    def artifact_uri(self) -> str:
        base = self.download_uri.rstrip("/")
        return f"{base}/{self.artifact_path}" if self.artifact_path else base

    def sibling_uri(self, name: str) -> str:
        """URI of a file next to the served file (ONNX external data)."""
        folder = self.artifact_path.rpartition("/")[0]
        return f"{self.download_uri.rstrip('/')}/{folder + '/' if folder else ''}{name}"

    def companion_files(self) -> list[str]:
        """Non-MLflow files beside an ONNX model file: candidates for its external data.

        One listing of the model folder; when it is empty the model file is self-contained
        and publishing needs no download to find out.
        """
        import mlflow

        if self.flavor != "onnx":
            return []
        folder = self.artifact_path.rpartition("/")[0]
        try:
            listing = mlflow.artifacts.list_artifacts(
                artifact_uri=f"{self.download_uri.rstrip('/')}/{folder}".rstrip("/")
            )
        except Exception as err:
            raise MlflowException(
                f"Cannot list the files of {self.model_uri} ({self.download_uri}): {err}",
                error_code=RESOURCE_DOES_NOT_EXIST,
            ) from err
        model_file = self.artifact_path.rpartition("/")[2]
        names = [info.path.rpartition("/")[2] for info in listing if not info.is_dir]
        return sorted(n for n in names if n not in _MLFLOW_FILES and n != model_file)

    def download(self, destination: Path, name: str | None = None) -> Path:
        """Fetch the served file (or its sibling ``name``) into ``destination``.

        The served file is checked to be what the flavor claims.
        """
        import mlflow

        uri = self.sibling_uri(name) if name else self.artifact_uri
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination)))
        except Exception as err:
            raise MlflowException(
                f"Cannot download {name or self.artifact_path} of {self.model_uri} from {uri}: {err}",
                error_code=RESOURCE_DOES_NOT_EXIST,
            ) from err
        if self.flavor == "torchscript" and name is None:
            check_torchscript(local, self.model_uri)
        return local

    def load_input_example(self) -> Any:
        """The input example logged with the model, or None; only the example file is fetched."""
        from mlflow.models import Model

        if not self.saved_input_example:
            return None
        model = Model(saved_input_example_info=self.saved_input_example, signature=self.signature)
        return model.load_input_example(self.download_uri)

    def provenance(self) -> dict[str, Any]:
        return {
            "model_uri": self.model_uri,
            "source_uri": self.artifact_uri,
            "registered_model": self.registered_model,
            "registered_version": self.registered_version,
            "run_id": self.run_id,
            "model_id": self.model_id,
        }


def check_torchscript(file: Path | BinaryIO, model_uri: str) -> None:
    """Raise unless ``file`` is a TorchScript archive (what Triton's pytorch backend loads).

    Only the zip's central directory is read, so a seekable remote reader costs a few ranged
    requests, not the model's bytes.
    """
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        names = []
    if not any("/code/" in name for name in names):
        raise MlflowException.invalid_parameter_value(
            f"The pytorch flavor of {model_uri} is not TorchScript (an eager pickled module or a "
            "torch.export program), which Triton's pytorch backend cannot serve. Log "
            "torch.jit.script(model) or torch.jit.trace(model, x) with "
            "mlflow.pytorch.log_model(..., serialization_format='pickle'), or log ONNX."
        )


def normalize_flavor(flavor: str | None) -> str | None:
    if flavor is None:
        return None
    if flavor not in _FLAVOR_ALIASES:
        raise MlflowException.invalid_parameter_value(
            f"Unknown flavor {flavor!r}: the triton target serves {', '.join(FLAVORS)} "
            "('pytorch' is accepted for TorchScript, 'pyfunc' for python_function)."
        )
    return _FLAVOR_ALIASES[flavor]


def _registry_lookup(model_uri: str) -> tuple[str, str | None, str | None, str | None, str | None]:
    """(download_uri, name, version, run_id, model_id) for a registry URI, else the URI itself."""
    from mlflow import MlflowClient

    match = _REGISTRY_URI.match(model_uri)
    if not match:
        if model_uri.startswith("models:/"):  # a logged model: models:/<model_id>
            from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

            try:
                return ModelsArtifactRepository.get_underlying_uri(model_uri), None, None, None, None
            except MlflowException as err:
                raise MlflowException(
                    f"Cannot resolve {model_uri}: {err.message}", error_code=RESOURCE_DOES_NOT_EXIST
                ) from err
        return model_uri, None, None, None, None
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
    return download_uri, name, str(version.version), version.run_id, getattr(version, "model_id", None)


def _local_or_uri(model_uri: str) -> str:
    path = Path(model_uri).expanduser()
    return str(path.resolve()) if "://" not in model_uri and ":/" not in model_uri else model_uri


def resolve_model(model_uri: str, flavor: str | None = None) -> ModelSource:
    """Read the MLmodel of ``model_uri`` and choose what Triton will serve.

    Raises:
        MlflowException: RESOURCE_DOES_NOT_EXIST if the model cannot be found;
            INVALID_PARAMETER_VALUE if it has neither ONNX nor TorchScript, or lacks ``flavor``.
    """
    import mlflow
    from mlflow.models import Model

    if not model_uri or not isinstance(model_uri, str):
        raise MlflowException.invalid_parameter_value(
            "A model URI is required, e.g. models:/name/1, models:/name@alias or runs:/id/model."
        )
    flavor = normalize_flavor(flavor)
    download_uri, name, version, run_id, model_id = _registry_lookup(model_uri)
    download_uri = _local_or_uri(download_uri)
    try:
        with tempfile.TemporaryDirectory(prefix="mlflow-triton-") as tmp:
            mlmodel_path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{download_uri.rstrip('/')}/MLmodel", dst_path=tmp
            )
            model = Model.load(mlmodel_path)
    except MlflowException:
        raise
    except Exception as err:
        raise MlflowException(
            f"Cannot read the MLmodel file of {model_uri} ({download_uri}): {err}. Check the URI "
            "and that MLFLOW_TRACKING_URI points at the server that holds it.",
            error_code=RESOURCE_DOES_NOT_EXIST,
        ) from err

    available = {}
    if "onnx" in model.flavors:
        available["onnx"] = model.flavors["onnx"].get("data", "model.onnx")
    if "pytorch" in model.flavors:
        model_data = model.flavors["pytorch"].get("model_data", "data")
        available["torchscript"] = f"{model_data.rstrip('/')}/{_TORCHSCRIPT_FILE}"
    if "triton" in model.flavors:  # a Triton model directory (mlflow_triton.flavors.triton)
        available["triton"] = str(model.flavors["triton"].get("data", "")).strip("/")
    if "python_function" in model.flavors:  # the whole MLflow model folder is served
        available["python_function"] = ""
    if not available:
        raise MlflowException.invalid_parameter_value(
            f"{model_uri} has flavors {sorted(model.flavors)} but none the triton target serves "
            f"({', '.join(FLAVORS)}). Log it with mlflow.onnx.log_model, mlflow.pytorch.log_model, "
            "mlflow_triton.flavors.triton.log_model or any MLflow flavor with a pyfunc."
        )
    if flavor is None:  # the order of FLAVORS is the order of preference
        flavor = next(f for f in FLAVORS if f in available)
    elif flavor not in available:
        raise MlflowException.invalid_parameter_value(
            f"{model_uri} has no {flavor} flavor; it has {sorted(available)}. Choose one of "
            "those with -C flavor=... (or --flavor)."
        )
    return ModelSource(
        model_uri=model_uri,
        download_uri=download_uri,
        flavor=flavor,
        artifact_path=available[flavor],
        signature=model.signature,
        registered_model=name,
        registered_version=version,
        run_id=run_id or model.run_id,
        model_id=model_id or getattr(model, "model_id", None),
        saved_input_example=model.saved_input_example_info,
    )
