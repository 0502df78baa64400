"""Python-based stand-in for Triton's C++ ``pytorch`` (libtorch) backend.

Triton loads this file for every model whose config.pbtxt says ``backend: "pytorch"``
when the C++ backend is absent. It serves the real TorchScript ``model.pt`` with
``torch.jit.load`` and maps tensors the way libtorch does (see "Naming" below).

``initialize`` refuses, with the C++ backend's wording, every config that the C++ backend
refuses at load, so that Triton marks such a model UNAVAILABLE here too. Each check mirrors
a function of triton-inference-server/pytorch_backend (``src/model_state.cc``,
``src/model_instance_state.cc``, ``src/libtorch_utils.cc``; ``src/libtorch.cc`` in older
releases) or triton-inference-server/backend (``src/backend_common.cc``):

* ``parameters`` DISABLE_OPTIMIZED_EXECUTION, ENABLE_CACHE_CLEANING, INFERENCE_MODE,
  DISABLE_CUDNN, ENABLE_TENSOR_FUSER, ENABLE_WEIGHT_SHARING, ENABLE_JIT_PROFILING and
  ENABLE_JIT_EXECUTOR must be booleans, INTRA_OP_THREAD_COUNT and INTER_OP_THREAD_COUNT
  integers -- ``ModelState::ParseParameters`` (``ParseParameter`` + ``ParseBoolValue`` /
  ``ParseIntValue``).
* The model file ``<version>/<default_model_filename or model.pt>`` must exist ("unable to
  find ...") and load with ``torch.jit.load`` ("failed to load model ...") --
  ``ModelState::LoadModel``.
* ``forward()``'s arguments (``self`` skipped): either one ``Dict[str, Tensor]``, or only
  ``Tensor`` / ``List`` arguments ("An input of type '...' was detected ..."), never more
  than one Dict ("Multiple inputs of kind DictType ..."); with Tensor arguments their number
  must equal the config inputs plus ``batch_input`` entries, sequence controls and states
  ("configuration expects N inputs, model provides M") -- ``ValidateInputs``.
* At least one input and one output ("model configuration must contain at least one
  input/output, none were specified.") -- ``ValidateInputs`` / ``ValidateOutputs``.
* ``data_type`` must map to a torch dtype: BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, FP32,
  FP64, or STRING (a list of str); TYPE_UINT16/32/64 and TYPE_BF16 are refused
  ("unsupported datatype ...") -- ``ValidateInputs`` / ``ValidateOutputs`` with
  ``ModelConfigDataTypeToTorchType``; also for sequence states.
* A TYPE_STRING tensor must be one-dimensional counting the batch dimension (``reshape.shape``
  if present, else ``dims``) ("Triton only supports 1 dimensional List of String ...") --
  ``ValidateInputs`` / ``ValidateOutputs``.
* Sequence-batching control tensors must be named ``<name>__<index>`` ("input '...' does not
  follow <name>__<index> naming convention.") -- ``ValidateBooleanSequenceControl`` /
  ``ValidateTypedSequenceControl``; with sequence states, all inputs/outputs and the
  states must follow ``<name>__<index>`` -- ``GetNamingConvention``.

Naming (``GetNamingConvention`` / ``AddInputToMap`` / ``ValidateOutputs``): tensor names are
*not* refused at load. Inputs map to forward() arguments by name when every config input
is a forward() argument name (FORWARD_ARGUMENT), else by the integer after the first
``__`` when every name has one (NAMED_INDEX, ``INPUT__0``), else by their order in the
config (STRICT_CONFIG_ORDERING; libtorch only logs a warning). Outputs are likewise
NAMED_INDEX (``OUTPUT__1`` is the second returned tensor) or config order. An index that
forward() does not return is refused per request at execution, as in ``ProcessRequests``.
"""

import json
import os
import re

import torch
from batching import execute_batched  # copied beside this file by make_backend_dir

# ModelConfigDataTypeToTorchType (src/libtorch_utils.cc); TYPE_STRING is handled apart.
_TORCH_TYPES = {
    "TYPE_BOOL": torch.bool,
    "TYPE_UINT8": torch.uint8,
    "TYPE_INT8": torch.int8,
    "TYPE_INT16": torch.int16,
    "TYPE_INT32": torch.int32,
    "TYPE_INT64": torch.int64,
    "TYPE_FP16": torch.float16,
    "TYPE_FP32": torch.float32,
    "TYPE_FP64": torch.float64,
}
_BOOL_PARAMETERS = (
    "DISABLE_OPTIMIZED_EXECUTION", "ENABLE_CACHE_CLEANING", "INFERENCE_MODE", "DISABLE_CUDNN",
    "ENABLE_TENSOR_FUSER", "ENABLE_WEIGHT_SHARING", "ENABLE_JIT_PROFILING", "ENABLE_JIT_EXECUTOR",
)  # fmt: skip
_INT_PARAMETERS = ("INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT")
_CONTROLS = (
    "CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_READY",
    "CONTROL_SEQUENCE_CORRID",
)  # fmt: skip

FORWARD_ARGUMENT, NAMED_INDEX, STRICT_CONFIG_ORDERING = "FORWARD_ARGUMENT", "NAMED_INDEX", "STRICT"


class ModelConfigError(Exception):
    """A config the C++ pytorch backend refuses at load."""


def _named_index(name: str):
    """The index of ``<name>__<index>`` as libtorch reads it (first ``__``, std::atoi), or
    None when the name has no ``__`` or a non-digit after it."""
    start = name.find("__")
    if start == -1:
        return None
    index = name[start + 2 :]
    if not re.fullmatch(r"[0-9]*", index):
        return None
    return int(index) if index else 0


def validate_parameters(config: dict) -> None:
    """``ModelState::ParseParameters``: present parameters must parse."""
    params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
    for key in _BOOL_PARAMETERS:
        if key in params and params[key].lower() not in ("true", "on", "1", "false", "off", "0"):
            raise ModelConfigError(f"failed to convert '{params[key]}' to boolean")
    for key in _INT_PARAMETERS:
        if key in params and not re.match(r"\s*[+-]?\d+", params[key]):
            raise ModelConfigError(f"failed to convert '{params[key]}' to integral number")


def _config_dims(io: dict) -> list:
    reshape = io.get("reshape")
    return list(reshape.get("shape", []) if reshape is not None else io.get("dims", []))


def _check_data_type(
    model: str, io: dict, batched: bool, what: str, name_key: str = "name"
) -> None:
    name, dtype = io.get(name_key, ""), io.get("data_type", "")
    if dtype not in _TORCH_TYPES and dtype != "TYPE_STRING":
        raise ModelConfigError(
            f"unsupported datatype {dtype} for {what} '{name}' for model '{model}'"
        )
    string_rank = len(_config_dims(io)) + (1 if batched else 0)
    if dtype == "TYPE_STRING" and what in ("input", "output") and string_rank > 1:
        raise ModelConfigError(
            f"Triton only supports 1 dimensional List of String as {what} for '{name}' for "
            f"model '{model}'"
        )


def naming_convention(config: dict, allowed: list) -> str:
    """``GetNamingConvention``: an empty ``allowed`` list means the outputs, as in libtorch."""
    model = config["name"]
    kind = "input" if allowed else "output"
    names = [io["name"] for io in config.get(kind, [])]
    convention = FORWARD_ARGUMENT if allowed else NAMED_INDEX
    if convention == FORWARD_ARGUMENT and any(name not in allowed for name in names):
        convention = NAMED_INDEX
    if convention == NAMED_INDEX and any(_named_index(name) is None for name in names):
        convention = STRICT_CONFIG_ORDERING
    sequence = config.get("sequence_batching")
    if sequence is not None and "state" in sequence:
        if convention != NAMED_INDEX:
            raise ModelConfigError(
                f"PyTorch model '{model}' is using sequence batching with state but not all "
                "inputs and outputs follow the <name>__<index> naming convention. "
            )
        for state in sequence["state"]:
            state_name = state.get(f"{kind}_name", "")
            if _named_index(state_name) is None:
                raise ModelConfigError(
                    f"PyTorch model '{model}' is using sequence batching with state but state "
                    f"'{state_name}' does not follow the <name>__<index> naming convention. "
                )
    return convention


def _sequence_controls(sequence: dict) -> list:
    """Names of the configured START/END/READY/CORRID control tensors, one per kind."""
    found = {}
    for control_input in sequence.get("control_input", []):
        for control in control_input.get("control", []):
            if control.get("kind") in _CONTROLS:
                found.setdefault(control["kind"], control_input["name"])
    return [found[kind] for kind in _CONTROLS if kind in found]


def validate_io(config: dict, module) -> dict:
    """``ModelInstanceState`` ctor, ``ValidateInputs`` and ``ValidateOutputs``.

    Returns how to call the module: ``dict_input``, ``input_order`` (config input names in
    forward() position order) and ``output_indices`` (returned-tensor index per output)."""
    model = config["name"]
    batched = int(config.get("max_batch_size", 0)) > 0
    inputs, outputs = config.get("input", []), config.get("output", [])
    states = (config.get("sequence_batching") or {}).get("state", [])

    # ValidateInputs
    allowed, dict_input = _forward_arguments(config, module)
    if not inputs:
        raise ModelConfigError(
            "model configuration must contain at least one input, none were specified."
        )
    convention = naming_convention(config, allowed)
    for io in inputs:
        _check_data_type(model, io, batched, "input")
    for state in states:
        _check_data_type(model, state, batched, "input state", "input_name")

    # ValidateOutputs
    if not outputs:
        raise ModelConfigError(
            "model configuration must contain at least one output, none were specified."
        )
    output_convention = naming_convention(config, [])
    for io in outputs:
        _check_data_type(model, io, batched, "output")
    for state in states:
        _check_data_type(model, state, batched, "output state", "output_name")
    return {
        "dict_input": dict_input,
        "input_order": _input_order(inputs, convention, allowed),
        "output_indices": [
            _named_index(io["name"]) if output_convention == NAMED_INDEX else position
            for position, io in enumerate(outputs)
        ],
    }


def _expected_input_count(config: dict) -> int:
    """Inputs forward() must take: configured and batch inputs, sequence controls and states."""
    expected = len(config.get("input", [])) + len(config.get("batch_input", []))
    sequence = config.get("sequence_batching")
    if sequence is None:
        return expected
    for name in _sequence_controls(sequence):
        if _named_index(name) is None:
            raise ModelConfigError(
                f"input '{name}' does not follow <name>__<index> naming convention."
            )
        expected += 1
    return expected + len(sequence.get("state", []))


def _forward_arguments(config: dict, module) -> tuple[list[str], bool]:
    """forward()'s argument names (empty for one ``Dict(str, Tensor)`` argument) and whether
    it takes that dict, checked against the configured input count."""
    expected = _expected_input_count(config)
    arguments = list(module.forward.schema.arguments)
    start = 1 if arguments and arguments[0].type.kind() == "ClassType" else 0
    arguments = arguments[start:]
    dict_input = len(arguments) == 1 and arguments[0].type.kind() == "DictType"
    if not arguments or dict_input:
        return [], dict_input
    if any(arg.type.kind() == "DictType" for arg in arguments[1:]):
        raise ModelConfigError(
            "Multiple inputs of kind DictType were detected. Only a single input of type "
            "Dict(str, Tensor) is supported."
        )
    for arg in arguments:
        if arg.type.kind() not in ("TensorType", "ListType"):
            raise ModelConfigError(
                f"An input of type '{arg.type.str()}' was detected in the model. Only a single "
                "input of type Dict(str, Tensor) or input(s) of type Tensor are supported."
            )
    if len(arguments) != expected:
        raise ModelConfigError(
            f"unable to load model '{config['name']}', configuration expects {expected} inputs, "
            f"model provides {len(arguments)}"
        )
    return [arg.name for arg in arguments], False


def _input_order(inputs: list, convention: str, allowed: list[str]) -> list[str]:
    """Config input names in forward() position order (``AddInputToMap``)."""

    def input_index(position: int, name: str) -> int:
        if convention == FORWARD_ARGUMENT:
            return allowed.index(name)
        index = _named_index(name) if convention == NAMED_INDEX else None
        return position if index is None else index

    order = sorted(enumerate(io["name"] for io in inputs), key=lambda item: input_index(*item))
    return [name for _, name in order]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        validate_parameters(config)
        filename = config.get("default_model_filename") or "model.pt"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.exists(path):
            raise ModelConfigError(  # ModelState::LoadModel names the model here
                f"unable to find '{path}' for model instance '{config['name']}'"
            )
        torch.set_num_threads(1)
        try:
            self.module = torch.jit.load(path, map_location="cpu").eval()
        except (
            RuntimeError,
            ValueError,
        ) as error:  # libtorch: "failed to load model '<name>': <what()>"
            raise ModelConfigError(f"failed to load model '{config['name']}': {error}") from None
        plan = validate_io(config, self.module)
        self.dict_input = plan["dict_input"]
        # Request tensors are read by name, in the order the module takes them.
        self.input_names = plan["input_order"]
        self.output_names = [t["name"] for t in config["output"]]
        self.output_indices = plan["output_indices"]
        self.batched = config.get("max_batch_size", 0) > 0

    def execute(self, requests):
        def run(arrays):
            tensors = [torch.from_numpy(array) for array in arrays]
            with torch.inference_mode():
                if self.dict_input:
                    result = self.module(dict(zip(self.input_names, tensors, strict=True)))
                else:
                    result = self.module(*tensors)
            result = (result,) if isinstance(result, torch.Tensor) else tuple(result)
            for name, index in zip(self.output_names, self.output_indices, strict=True):
                if index >= len(result):  # ProcessRequests refuses it per request
                    raise ValueError(
                        f"The output {name} in the model configuration refers to an output index "
                        f"which doesn't exist. This model has {len(result)} outputs"
                    )
            return [result[i].numpy() for i in self.output_indices]

        return execute_batched(requests, self.input_names, self.output_names, self.batched, run)
