"""What the repository receives for an MLflow ``python_function`` model: Triton's Python backend.

Any pyfunc (scikit-learn, a custom ``PythonModel``, ...) is served by a generated version
folder::

    NAME/<version>/model.py              mlflow_triton/flavors/pyfunc_backend_model.py (the template)
    NAME/<version>/mlflow_model/...      the whole MLflow model, loaded with
                                         mlflow.pyfunc.load_model in the backend
    NAME/<version>/python_env.tar.gz     only with -C python_env=<archive URI>

The config has ``backend: "python"`` and one Triton tensor per signature column (``[batch,
1]``, strings as ``TYPE_STRING``) or per signature tensor. Triton runs ``model.py`` in the
server's own Python environment unless ``python_env`` names a packed one
(``EXECUTION_ENV_PATH``). A model whose requirements do not import there fails to load, so
the rollout refuses it with the missing package's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.exceptions import MlflowException
from tritonclient.grpc import model_config_pb2 as mc

from mlflow_triton.triton_config import model_config as mcfg
from mlflow_triton.flavors.triton_source import ConfigBuilder, Files, download_artifact, files_under

if TYPE_CHECKING:
    from mlflow.models.signature import ModelSignature

    from mlflow_triton.settings.deployment import DeploymentConfig
    from mlflow_triton.flavors.model_source import ModelSource

TEMPLATE = Path(__file__).with_name("pyfunc_backend_model.py")
MODEL_FOLDER = "mlflow_model"
ENV_ARCHIVE = "python_env.tar.gz"
#: Config parameter telling model.py how the pyfunc takes its input and which tensors to decode.
PYFUNC_IO_PARAMETER = "mlflow_triton.pyfunc_io"
#: Python backend parameter naming a packed environment (unpacked by the stub).
EXECUTION_ENV_PARAMETER = "EXECUTION_ENV_PATH"


def _is_string(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind in ("U", "O")


def pyfunc_io(signature: "ModelSignature | None") -> tuple[mcfg.ModelIO, dict[str, Any]]:
    """Triton tensors for a pyfunc signature, and how ``model.py`` maps them back.

    Columns become one tensor each, shaped ``[-1]`` (a value per row); tensors keep their
    shapes. Unnamed entries are called ``input``/``output`` (``input_<i>`` when several).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE without a signature, or for a type Triton
            has no tensor type for.
    """
    if signature is None or signature.inputs is None or signature.outputs is None:
        raise MlflowException.invalid_parameter_value(
            "The python_function model has no MLflow signature with inputs and outputs, so its "
            "Triton tensors are unknown. Log it with signature=infer_signature(x, model.predict(x)) "
            "or an input_example."
        )
    decode: list[str] = []

    def specs(schema, kind: str) -> tuple[tuple[mcfg.TensorSpec, ...], str]:
        entries = schema.inputs
        tensors = schema.is_tensor_spec()
        result = []
        for index, entry in enumerate(entries):
            source = entry.name or (kind if len(entries) == 1 else f"{kind}_{index}")
            dtype = entry.type if tensors else np.dtype(entry.type.to_numpy())
            where = f"signature {kind} {source!r}"
            data_type = mcfg.triton_type(dtype, where)
            shape = tuple(int(d) for d in entry.shape) if tensors else (-1,)
            if kind == "input" and _is_string(dtype) and str(getattr(entry.type, "name", "")) != "binary":
                decode.append(source)
            result.append(mcfg.TensorSpec(source, data_type, shape, source))
        mode = "columns" if not tensors else "array" if len(entries) == 1 and not entries[0].name else "tensors"
        return tuple(result), mode

    inputs, input_mode = specs(signature.inputs, "input")
    outputs, _ = specs(signature.outputs, "output")
    return mcfg.ModelIO(inputs, outputs), {"input_mode": input_mode, "decode": decode}


def locate_pyfunc(
    source: "ModelSource", tmp: Path, config: "DeploymentConfig"
) -> tuple[Files, mcfg.ModelIO, ConfigBuilder]:
    """Download the MLflow model (and the packed environment), lay out the version folder.

    Returns:
        The files to upload (``model.py`` first), the tensors, the config builder.
    """
    io, mapping = pyfunc_io(source.signature)  # before any download: a bad signature fails fast
    model_dir = download_artifact(source.download_uri, tmp / MODEL_FOLDER, source.model_uri)
    files: Files = [(str(TEMPLATE), "model.py")] + files_under(model_dir, f"{MODEL_FOLDER}/")
    if config.python_env:
        archive = download_artifact(config.python_env, tmp / "python_env", source.model_uri)
        files.append((str(archive), ENV_ARCHIVE))

    def build(name: str, version: int) -> mc.ModelConfig:
        message = mcfg.build_model_config(name, "python_function", io, config, version)
        message.parameters[PYFUNC_IO_PARAMETER].string_value = json.dumps(mapping, sort_keys=True)
        if config.python_env:
            # Resolved by the Python backend to the model's local copy (S3 repositories too).
            message.parameters[EXECUTION_ENV_PARAMETER].string_value = f"$$TRITON_MODEL_DIRECTORY/{version}/{ENV_ARCHIVE}"
        return message

    return files, io, build
