"""Generated configs in unit tests, with each flavor's own backend and file name."""

from __future__ import annotations

from dataclasses import replace

from mlflow_triton.flavors import onnx, torchscript
from mlflow_triton.flavors.torchscript import io_from_signature
from mlflow_triton.triton_config.model_config import build_model_config
from mlflow_triton.triton_config.tensors import ModelIO, TensorSpec, triton_type

FLAVOR_MODULES = {"onnx": onnx, "torchscript": torchscript}


def signature_io(signature, flavor: str) -> ModelIO:
    """Tensors from a signature: TorchScript's (INPUT__<i> names, its type limits), or, for
    "onnx", what a graph with the signature's names, types and shapes would give."""
    if flavor == "torchscript" or signature is None or not signature.inputs.is_tensor_spec():
        io = io_from_signature(signature)
        if flavor == "torchscript":
            return io
        rename = lambda specs: tuple(replace(s, name=s.source_name) for s in specs)  # noqa: E731
        return ModelIO(rename(io.inputs), rename(io.outputs))

    def specs(schema, kind):
        return tuple(
            TensorSpec(s.name or kind, triton_type(s.type, f"signature {kind}"), tuple(int(d) for d in s.shape), s.name or kind)
            for s in schema.inputs
        )

    return ModelIO(specs(signature.inputs, "input"), specs(signature.outputs, "output"))


def generated_config(name, flavor, io, config, version, warmup=None):
    module = FLAVOR_MODULES[flavor]
    return build_model_config(name, io, config, version, module.BACKEND, module.MODEL_FILE, warmup)
