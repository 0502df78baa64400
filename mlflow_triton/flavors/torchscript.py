"""The ``torchscript`` flavor: a TorchScript file logged with ``mlflow.pytorch``, served by
Triton's pytorch (libtorch) backend.

A TorchScript file does not describe its tensors, so they come from the MLflow signature: the
backend needs them named ``INPUT__<i>`` / ``OUTPUT__<j>`` in signature order; the signature's
names (``input``/``output`` for an unnamed tensor signature, ``input_<i>`` when several) are
what ``predict`` uses. A column signature becomes one ``[batch, columns]`` tensor. Only the
zip's central directory is read to check that the file is TorchScript (an eager pickled module
cannot be served)::

    plan = TORCHSCRIPT.plan(source, settings, workdir)   # io known from the signature
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Mapping, Sequence

import numpy as np
from mlflow.exceptions import MlflowException

from mlflow_triton.flavors.base import (
    Inspection,
    PlanSettings,
    PublishPlan,
    SourceFile,
    refuse_accelerator,
)
from mlflow_triton.triton_config.model_config import build_model_config
from mlflow_triton.triton_config.tensors import ModelIO, TensorSpec, triton_type

if TYPE_CHECKING:
    from mlflow.models.signature import ModelSignature

    from mlflow_triton.flavors.source import ModelSource

MODEL_FILE = "model.pt"
BACKEND = "pytorch"
#: Where ``mlflow.pytorch`` saves the module inside its ``model_data`` folder.
LOGGED_FILE = "model.pth"
#: Types Triton's pytorch backend cannot take.
UNSUPPORTED_TYPES = frozenset({"TYPE_STRING", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64"})
#: TorchScript's profiling executor profiles the first call and optimizes the graph on the
#: second (``torch._C._jit_get_num_profiled_runs()`` is 1): two warmup requests take both off
#: the first client requests.
WARMUP_REQUESTS = 2


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


def io_from_signature(signature: "ModelSignature | None") -> ModelIO:
    """Tensor specs from an MLflow signature, named ``INPUT__<i>``/``OUTPUT__<j>`` for Triton.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE without a signature, for mixed column types,
            or for a type the pytorch backend cannot take.
    """
    if signature is None or signature.inputs is None or signature.outputs is None:
        raise MlflowException.invalid_parameter_value(
            "The torchscript model has no MLflow signature with inputs and outputs, so its tensor "
            "names, types and shapes are unknown. Log it with signature=infer_signature(x, y) or "
            "an input_example."
        )

    def specs(schema, kind: str, prefix: str) -> tuple[TensorSpec, ...]:
        if not schema.is_tensor_spec():
            dtypes = {np.dtype(c.type.to_numpy()) for c in schema.inputs}
            if len(dtypes) != 1:
                raise MlflowException.invalid_parameter_value(
                    f"The signature's {kind}s are columns of mixed types {sorted(map(str, dtypes))}:"
                    " log a tensor-based signature (numpy arrays) for Triton."
                )
            dtype = triton_type(dtypes.pop(), f"signature {kind}")
            return (TensorSpec(f"{prefix}__0", dtype, (-1, len(schema.inputs)), kind),)
        result = []
        for index, spec in enumerate(schema.inputs):
            source = spec.name or (kind if len(schema.inputs) == 1 else f"{kind}_{index}")
            where = f"signature {kind} {source!r}"
            dtype = triton_type(spec.type, where)
            if dtype in UNSUPPORTED_TYPES:
                raise MlflowException.invalid_parameter_value(
                    f"{where}: {dtype} tensors are not supported by Triton's pytorch backend."
                )
            result.append(TensorSpec(f"{prefix}__{index}", dtype, tuple(int(d) for d in spec.shape), source))
        return tuple(result)

    return ModelIO(specs(signature.inputs, "input", "INPUT"), specs(signature.outputs, "output", "OUTPUT"))


class TorchScriptFlavor:
    """See the module docstring."""

    name = "torchscript"
    aliases: tuple[str, ...] = ("pytorch",)
    reference_runtime = "torch"
    execution_accelerators = False

    def artifact_path(self, flavors: Mapping[str, Mapping]) -> str | None:
        if "pytorch" not in flavors:
            return None
        return f"{flavors['pytorch'].get('model_data', 'data').rstrip('/')}/{LOGGED_FILE}"

    def plan(self, source: "ModelSource", settings: PlanSettings, workdir: Path) -> PublishPlan:
        refuse_accelerator(
            self, settings, "Triton's pytorch (libtorch) backend documents no execution accelerators. "
            "Log the model as ONNX, or compile it with Torch-TensorRT before logging.",
        )
        io = io_from_signature(source.model.signature)  # before any byte moves

        def inspect(model_file: Path | BinaryIO) -> Inspection:
            check_torchscript(model_file, source.model_uri)
            return Inspection(io)

        return PublishPlan(
            source=source,
            files=[SourceFile(source.artifact_uri, MODEL_FILE)],
            io=io,
            inspect=inspect,
            config=lambda name, version, io, warmup: build_model_config(
                name, io, settings, version, BACKEND, MODEL_FILE, warmup
            ),
            warmup_count=WARMUP_REQUESTS,
        )

    def run_reference(
        self, model_file: Path, inputs: Sequence[tuple[str, np.ndarray]], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        import torch

        module = torch.jit.load(str(model_file), map_location="cpu").eval()
        with torch.no_grad():
            result = module(*[torch.from_numpy(np.array(array)) for _, array in inputs])
        values = result if isinstance(result, (tuple, list)) else (result,)
        return {name: value.detach().cpu().numpy() for name, value in zip(outputs, values, strict=False)}  # a module may return more


TORCHSCRIPT = TorchScriptFlavor()
