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
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from mlflow.exceptions import MlflowException
from tritonclient.grpc import model_config_pb2 as mc

from mlflow_triton.flavors.base import (
    PlanSettings,
    PublishPlan,
    SourceFile,
    local_files,
    refuse_accelerator,
)
from mlflow_triton.repository.artifacts import download_artifact
from mlflow_triton.triton_config.model_config import build_model_config
from mlflow_triton.triton_config.tensors import ModelIO, TensorSpec, triton_type

if TYPE_CHECKING:
    from mlflow.models.signature import ModelSignature

    from mlflow_triton.flavors.source import ModelSource
    from mlflow_triton.triton_config.warmup import WarmupPlan

TEMPLATE = Path(__file__).with_name("pyfunc_backend_model.py")
BACKEND = "python"
MODEL_FOLDER = "mlflow_model"
ENV_ARCHIVE = "python_env.tar.gz"
#: Config parameter telling model.py how the pyfunc takes its input and which tensors to decode.
PYFUNC_IO_PARAMETER = "mlflow_triton.pyfunc_io"
#: Python backend parameter naming a packed environment (unpacked by the stub).
EXECUTION_ENV_PARAMETER = "EXECUTION_ENV_PATH"


def _is_string(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind in ("U", "O")


def pyfunc_io(signature: "ModelSignature | None") -> tuple[ModelIO, dict[str, Any]]:
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

    def specs(schema, kind: str) -> tuple[tuple[TensorSpec, ...], str]:
        entries = schema.inputs
        tensors = schema.is_tensor_spec()
        result = []
        for index, entry in enumerate(entries):
            source = entry.name or (kind if len(entries) == 1 else f"{kind}_{index}")
            dtype = entry.type if tensors else np.dtype(entry.type.to_numpy())
            where = f"signature {kind} {source!r}"
            data_type = triton_type(dtype, where)
            shape = tuple(int(d) for d in entry.shape) if tensors else (-1,)
            if kind == "input" and _is_string(dtype) and str(getattr(entry.type, "name", "")) != "binary":
                decode.append(source)
            result.append(TensorSpec(source, data_type, shape, source))
        mode = "columns" if not tensors else "array" if len(entries) == 1 and not entries[0].name else "tensors"
        return tuple(result), mode

    inputs, input_mode = specs(signature.inputs, "input")
    outputs, _ = specs(signature.outputs, "output")
    return ModelIO(inputs, outputs), {"input_mode": input_mode, "decode": decode}


class PyfuncFlavor:
    """See the module docstring."""

    name = "python_function"
    aliases: tuple[str, ...] = ("pyfunc",)
    reference_runtime = None
    execution_accelerators = False

    def artifact_path(self, flavors: Mapping[str, Mapping]) -> str | None:
        return "" if "python_function" in flavors else None  # the whole MLflow model is served

    def plan(self, source: "ModelSource", settings: PlanSettings, workdir: Path) -> PublishPlan:
        """Lay out the version folder: ``model.py`` first, the MLflow model, the environment.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE without a usable signature (before any
                download) or with ``-C accelerator``.
        """
        refuse_accelerator(self, settings, "Triton's Python backend documents no execution accelerators.")
        io, mapping = pyfunc_io(source.model.signature)  # before any download: a bad signature fails fast
        model_dir = download_artifact(source.model.download_uri, workdir / MODEL_FOLDER, source.model_uri)
        files = [SourceFile(str(TEMPLATE), "model.py")] + local_files(model_dir, f"{MODEL_FOLDER}/")
        if settings.python_env:
            archive = download_artifact(settings.python_env, workdir / "python_env", source.model_uri)
            files.append(SourceFile(str(archive), ENV_ARCHIVE))

        def config(name: str, version: int, io: ModelIO, warmup: "WarmupPlan | None") -> mc.ModelConfig:
            message = build_model_config(name, io, settings, version, BACKEND, "model.py", warmup)
            message.parameters[PYFUNC_IO_PARAMETER].string_value = json.dumps(mapping, sort_keys=True)
            if settings.python_env:
                # Resolved by the Python backend to the model's local copy (S3 repositories too).
                message.parameters[EXECUTION_ENV_PARAMETER].string_value = f"$$TRITON_MODEL_DIRECTORY/{version}/{ENV_ARCHIVE}"
            return message

        return PublishPlan(source=source, files=files, io=io, config=config, warmup_count=1)

    def run_reference(self, model_file: Path, inputs: Any, outputs: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError("a pyfunc model is checked by Triton's answers alone")


PYFUNC = PyfuncFlavor()
