"""Python-based stand-in for Triton's C++ ``onnxruntime`` backend.

Triton loads this file for every model whose config.pbtxt says ``backend: "onnxruntime"``
when the C++ backend is absent (the CPU-only ``tritonserver`` from nvidia-pytriton).
It serves the real ``model.onnx`` with an onnxruntime session and honours the same
config: tensor names from the config, batching along axis 0 when ``max_batch_size > 0``.

``initialize`` refuses, with the C++ backend's wording, every config that the C++ backend
refuses at load, so that Triton marks such a model UNAVAILABLE here too. Each check
mirrors a function of triton-inference-server/onnxruntime_backend (``src/onnxruntime.cc``
unless noted) or triton-inference-server/backend (``src/backend_common.cc``):

* ``parameters``: ``execution_mode`` must be an integer 0 or 1; ``intra_op_thread_count``
  and ``inter_op_thread_count`` must be integers; ``enable_mem_arena``,
  ``enable_mem_pattern`` and ``share_session_between_instances`` must be booleans
  -- ``ModelState::ModelState`` (with ``ParseIntValue`` / ``ParseBoolValue`` of
  backend_common.cc).
* ``optimization.execution_accelerators.cpu_execution_accelerator`` may only name
  ``openvino`` ("unknown Execution Accelerator ...") -- ``ModelState::LoadModel``.
* The model file ``<version>/<default_model_filename or model.onnx>`` (``<dir>/model.onnx``
  when it is a directory) must exist ("unable to find ...") -- ``ModelState::LoadModel``.
* Every graph input, overridable initializer and graph output must be a tensor
  ("Unsupported ONNX Type ...") -- ``InputOutputInitializerInfos`` in
  ``src/onnxruntime_utils.cc``.
* Sequence-batching controls (START/END/READY, CORRID) must be graph inputs with
  non-batch dims ``[1]`` and the control's data type -- ``ValidateBooleanSequenceControl``
  / ``ValidateTypedSequenceControl``.
* The number of graph inputs (initializers excluded) must equal the config's inputs, minus
  ``optional`` ones, plus ``batch_input`` entries, sequence controls and states
  ("configuration expects N inputs, model provides M") -- ``ModelInstanceState`` ctor +
  ``ModelInstanceState::ValidateInputs``.
* An ``optional`` input is refused when ``max_batch_size > 0``, and so is an optional
  ragged input -- ``ValidateInputs``.
* Every config input must be a graph input or an overridable initializer ("unexpected
  inference input ...") -- ``ValidateInputs`` + ``CheckAllowedModelInput``; every config
  output a graph output ("unexpected inference output ...") -- ``ValidateOutputs`` +
  ``CheckAllowedModelOutput``.
* ``data_type`` must map to an ONNX element type ("unsupported datatype ...", e.g.
  TYPE_BF16) and equal the graph's ("configuration expects datatype ..., model provides
  ...") -- ``ValidateInputs`` / ``ValidateOutputs`` with ``ModelConfigDataTypeToOnnxDataType``
  and ``ConvertFromOnnxDataType`` (``src/onnxruntime_utils.cc``); also for sequence states.
* Shapes: the ``reshape.shape`` if present, else ``dims``, is compared to the graph shape (as
  onnxruntime reports it after its shape inference, the API the C++ backend reads)
  by ``CompareDimsSupported`` (``src/onnxruntime_utils.cc``): with ``max_batch_size > 0``
  the graph's first dim must be dynamic (-1 / symbolic) and the graph must have exactly
  ``1 + len(dims)`` dims; without batching exactly ``len(dims)``. A graph dim that is fixed
  must equal the config dim (a config ``-1`` against a fixed graph dim is refused); a
  dynamic graph dim accepts any config dim for inputs, but for outputs the comparison is
  exact (``compare_exact``), so a dynamic graph output dim needs ``-1`` in the config.
  A scalar (rank-0) graph tensor only accepts config dims that are all 1. A
  ``allow_ragged_batch`` input needs graph shape ``[-1]``. ``batch_output`` targets are not
  compared -- ``ValidateInputs`` / ``ValidateOutputs``.

Not mirrored: GPU execution accelerators (TensorRT/CUDA options, GPU-only) and
auto-completion of a config without inputs or outputs (``ModelState::AutoCompleteConfig``).
"""

import json
import os
import re

import onnxruntime
from batching import execute_batched  # copied beside this file by make_backend_dir

# onnxruntime's NodeArg.type -> (OnnxDataTypeName, TRITONSERVER_DataTypeString of
# ConvertFromOnnxDataType), both from src/onnxruntime_utils.cc.
_ONNX_ELEMENT_TYPES = {
    "tensor(float)": ("FLOAT", "FP32"),
    "tensor(uint8)": ("UINT8", "UINT8"),
    "tensor(int8)": ("INT8", "INT8"),
    "tensor(uint16)": ("UINT16", "UINT16"),
    "tensor(int16)": ("INT16", "INT16"),
    "tensor(int32)": ("INT32", "INT32"),
    "tensor(int64)": ("INT64", "INT64"),
    "tensor(string)": ("STRING", "BYTES"),
    "tensor(bool)": ("BOOL", "BOOL"),
    "tensor(float16)": ("FLOAT16", "FP16"),
    "tensor(double)": ("DOUBLE", "FP64"),
    "tensor(uint32)": ("UINT32", "UINT32"),
    "tensor(uint64)": ("UINT64", "UINT64"),
    "tensor(complex64)": ("COMPLEX64", "INVALID"),
    "tensor(complex128)": ("COMPLEX64", "INVALID"),
    "tensor(bfloat16)": ("BFLOAT16", "INVALID"),
}
# ModelConfigDataTypeToOnnxDataType (src/onnxruntime_utils.cc): TYPE_BF16 has no mapping.
_CONFIG_TO_ONNX = {
    "TYPE_BOOL": "tensor(bool)",
    "TYPE_UINT8": "tensor(uint8)",
    "TYPE_UINT16": "tensor(uint16)",
    "TYPE_UINT32": "tensor(uint32)",
    "TYPE_UINT64": "tensor(uint64)",
    "TYPE_INT8": "tensor(int8)",
    "TYPE_INT16": "tensor(int16)",
    "TYPE_INT32": "tensor(int32)",
    "TYPE_INT64": "tensor(int64)",
    "TYPE_FP16": "tensor(float16)",
    "TYPE_FP32": "tensor(float)",
    "TYPE_FP64": "tensor(double)",
    "TYPE_STRING": "tensor(string)",
}
# OnnxTypeName (src/onnxruntime_utils.cc) for the non-tensor kinds onnxruntime reports.
_ONNX_KINDS = {
    "seq": "ONNX_TYPE_SEQUENCE", "map": "ONNX_TYPE_MAP", "sparse_tensor": "ONNX_TYPE_SPARSETENSOR",
}  # fmt: skip
_BOOLEAN_CONTROLS = ("CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_READY")


class ModelConfigError(Exception):
    """A config the C++ onnxruntime backend refuses at load."""


def _shape_str(dims) -> str:  # ShapeToString (backend_common.cc)
    return "[" + ",".join(str(d) for d in dims) + "]"


def _parse_int(value: str) -> int:  # ParseIntValue (std::stoi: leading integer)
    match = re.match(r"\s*[+-]?\d+", value)
    if not match:
        raise ModelConfigError(f"failed to convert '{value}' to integral number")
    return int(match.group())


def _parse_bool(value: str) -> bool:  # ParseBoolValue (backend_common.cc)
    lowered = value.lower()
    if lowered in ("true", "on", "1"):
        return True
    if lowered in ("false", "off", "0"):
        return False
    raise ModelConfigError(f"failed to convert '{value}' to boolean")


def _config_dims(io: dict) -> list:
    """The shape compared to the model: ``reshape.shape`` when present, else ``dims``."""
    reshape = io.get("reshape")
    source = reshape.get("shape", []) if reshape is not None else io.get("dims", [])
    return [int(d) for d in source]


def _tensor_infos(node_args) -> dict:
    """name -> (NodeArg.type, dims with -1 for symbolic/unknown); InputOutputInitializerInfos."""
    infos = {}
    for arg in node_args:
        if not arg.type.startswith("tensor("):
            kind = _ONNX_KINDS.get(arg.type.split("(", 1)[0], "ONNX_TYPE_UNKNOWN")
            raise ModelConfigError(
                f"Unsupported ONNX Type '{kind}' for I/O '{arg.name}', expected 'ONNX_TYPE_TENSOR'."
            )
        dims = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
        infos[arg.name] = (arg.type, dims)
    return infos


def compare_dims_supported(
    model: str, tensor: str, model_shape, dims, max_batch_size: int, exact: bool
) -> None:
    """CompareDimsSupported (src/onnxruntime_utils.cc)."""
    if max_batch_size > 0:
        if not model_shape or model_shape[0] != -1:
            raise ModelConfigError(
                f"model '{model}', tensor '{tensor}': for the model to support batching the shape "
                "should have at least 1 dimension and the first dimension must be -1; but shape "
                f"expected by the model is {_shape_str(model_shape)}"
            )
        full = [-1, *dims]
    else:
        full = list(dims)
    ok = len(model_shape) == len(full) and all(
        m == c for m, c in zip(model_shape, full, strict=True) if exact or m != -1
    )
    if ok:
        return
    if max_batch_size > 0:
        raise ModelConfigError(
            f"model '{model}', tensor '{tensor}': the model expects {len(model_shape)} dimensions "
            f"(shape {_shape_str(model_shape)}) but the model configuration specifies {len(full)} "
            "dimensions (an initial batch dimension because max_batch_size > 0 followed by the "
            f"explicit tensor shape, making complete shape {_shape_str(full)})"
        )
    raise ModelConfigError(
        f"model '{model}', tensor '{tensor}': the model expects {len(model_shape)} dimensions "
        f"(shape {_shape_str(model_shape)}) but the model configuration specifies {len(full)} "
        f"dimensions (shape {_shape_str(full)})"
    )


def _check_scalar(model: str, tensor: str, dims) -> None:
    if any(d != 1 for d in dims):
        raise ModelConfigError(
            f"unable to load model '{model}', scalar tensor '{tensor}', should only provide 1 in "
            "the model configuration when the model doesn't support batching. Model "
            f"configuration provided: {_shape_str(dims)}."
        )


def _check_data_type(model: str, io_name: str, io_dtype: str, onnx_type: str, what: str) -> None:
    expected = _CONFIG_TO_ONNX.get(io_dtype)
    if expected is None:
        raise ModelConfigError(
            f"unsupported datatype {io_dtype} for {what} '{io_name}' for model '{model}'"
        )
    if expected != onnx_type:
        provided = _ONNX_ELEMENT_TYPES.get(onnx_type, ("UNDEFINED", "INVALID"))[1]
        raise ModelConfigError(
            f"unable to load model '{model}', configuration expects datatype {io_dtype} for "
            f"{what} '{io_name}', model provides TYPE_{provided}"
        )


def _check_allowed(io_name: str, allowed, what: str) -> None:
    """CheckAllowedModelInput / CheckAllowedModelOutput (backend_common.cc)."""
    if io_name not in allowed:
        raise ModelConfigError(
            f"unexpected inference {what} '{io_name}', allowed {what}s are: "
            + ", ".join(sorted(allowed))
        )


def _sequence_control(sequence: dict, kind: str):
    """(tensor name, data type) of the ``kind`` control, or None (Get*SequenceControlProperties)."""
    for control_input in sequence.get("control_input", []):
        for control in control_input.get("control", []):
            if control.get("kind") != kind:
                continue
            if kind == "CONTROL_SEQUENCE_CORRID":
                return control_input["name"], control.get("data_type", "")
            for field, dtype in (
                ("int32_false_true", "TYPE_INT32"),
                ("fp32_false_true", "TYPE_FP32"),
                ("bool_false_true", "TYPE_BOOL"),
            ):
                if control.get(field):
                    return control_input["name"], dtype
            return control_input["name"], ""
    return None


def validate_model_state(config: dict) -> None:
    """The load-time parameter checks of ``ModelState::ModelState`` / ``ModelState::LoadModel``."""
    params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
    if "execution_mode" in params:
        mode = _parse_int(params["execution_mode"])
        if mode not in (0, 1):
            raise ModelConfigError(
                "Invalid configuration value provided. Expected values for  execution_mode are "
                f"0 or 1 but got {mode} ."
            )
    for key in ("intra_op_thread_count", "inter_op_thread_count"):
        if key in params:
            _parse_int(params[key])
    for key in ("enable_mem_arena", "enable_mem_pattern", "share_session_between_instances"):
        if key in params:
            _parse_bool(params[key])
    accelerators = (config.get("optimization") or {}).get("execution_accelerators") or {}
    for accelerator in accelerators.get("cpu_execution_accelerator", []):
        if accelerator.get("name") != "openvino":
            raise ModelConfigError(
                f"unknown Execution Accelerator '{accelerator.get('name', '')}' is requested"
            )


def validate_io(config: dict, session) -> None:
    """``ModelInstanceState`` ctor, ``ValidateInputs`` and ``ValidateOutputs``."""
    graph_inputs = _tensor_infos(session.get_inputs())
    expected = _expected_input_count(config, graph_inputs)
    if len(graph_inputs) != expected:
        raise ModelConfigError(
            f"unable to load model '{config['name']}', configuration expects {expected} inputs, "
            f"model provides {len(graph_inputs)}"
        )
    initializers = _tensor_infos(session.get_overridable_initializers())
    for io in config.get("input", []):
        _validate_input(config, io, {**graph_inputs, **initializers})
    _validate_outputs(config, _tensor_infos(session.get_outputs()))


def _expected_input_count(config: dict, graph_inputs: dict) -> int:
    """Inputs the graph must have: required, batch, sequence control (checked) and state ones."""
    model = config["name"]
    max_batch_size = int(config.get("max_batch_size", 0))
    inputs = config.get("input", [])
    expected = len(inputs) - sum(1 for io in inputs if io.get("optional"))
    expected += len(config.get("batch_input", []))
    sequence = config.get("sequence_batching")
    if sequence is None:
        return expected
    for kind in (*_BOOLEAN_CONTROLS, "CONTROL_SEQUENCE_CORRID"):
        control = _sequence_control(sequence, kind)
        if control is None:
            continue
        name, dtype = control
        if name not in graph_inputs:
            raise ModelConfigError(
                f"configuration specified sequence control '{name}', but model does not "
                "provide that input"
            )
        onnx_type, dims = graph_inputs[name]
        debatched = dims[1:] if max_batch_size > 0 else dims
        if debatched != [1]:
            raise ModelConfigError(
                f"unable to load model '{model}', sequence control '{name}' in model has dims "
                f"{_shape_str(debatched)} but dims [1] is expected"
            )
        if _CONFIG_TO_ONNX.get(dtype) != onnx_type:
            raise ModelConfigError(
                f"unable to load model '{model}', sequence control '{name}', the model expects "
                f"data-type {_ONNX_ELEMENT_TYPES.get(onnx_type, ('UNDEFINED',))[0]} but the "
                f"model configuration specifies data-type {dtype}"
            )
        expected += 1
    return expected + len(sequence.get("state", []))


def _validate_input(config: dict, io: dict, allowed: dict) -> None:
    """``ValidateInputs`` for one input; ``allowed``: graph inputs and overridable initializers."""
    model = config["name"]
    max_batch_size = int(config.get("max_batch_size", 0))
    name, dtype = io["name"], io.get("data_type", "")
    optional = bool(io.get("optional"))
    if optional and max_batch_size != 0:
        raise ModelConfigError(
            f"unable to load model '{model}', optional input '{name}' is not supported for "
            "models that support batching"
        )
    _check_allowed(name, allowed, "input")
    onnx_type, model_shape = allowed[name]
    _check_data_type(model, name, dtype, onnx_type, "input")
    dims = _config_dims(io)
    ragged = bool(io.get("allow_ragged_batch"))
    if optional and ragged:
        raise ModelConfigError(
            f"unable to load model '{model}', configuration expects model provides input with "
            f"shape [-1] for ragged input '{name}', which is not supported for optional input"
        )
    if ragged:
        if model_shape != [-1]:
            raise ModelConfigError(
                f"unable to load model '{model}', configuration expects model provides input "
                f"with shape [-1]  for ragged input '{name}', model provides "
                f"{_shape_str(model_shape)}"
            )
    elif model_shape:
        compare_dims_supported(model, name, model_shape, dims, max_batch_size, exact=False)
    else:
        _check_scalar(model, name, dims)


def _validate_outputs(config: dict, graph_outputs: dict) -> None:
    """``ValidateOutputs``: configured outputs (batch outputs skip shapes), sequence states."""
    model = config["name"]
    max_batch_size = int(config.get("max_batch_size", 0))
    batch_outputs = {
        target for bo in config.get("batch_output", []) for target in bo.get("target_name", [])
    }
    for io in config.get("output", []):
        name, dtype = io["name"], io.get("data_type", "")
        _check_allowed(name, graph_outputs, "output")
        onnx_type, model_shape = graph_outputs[name]
        _check_data_type(model, name, dtype, onnx_type, "output")
        if name in batch_outputs:
            continue
        dims = _config_dims(io)
        if model_shape:
            compare_dims_supported(model, name, model_shape, dims, max_batch_size, exact=True)
        else:
            _check_scalar(model, name, dims)
    for state in (config.get("sequence_batching") or {}).get("state", []):
        name = state.get("output_name", "")
        _check_allowed(name, graph_outputs, "output")
        dtype = state.get("data_type", "")
        _check_data_type(model, name, dtype, graph_outputs[name][0], "output state")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        validate_model_state(config)
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if os.path.isdir(path):
            path = os.path.join(path, "model.onnx")
        if not os.path.exists(path):
            raise ModelConfigError(  # ModelState::LoadModel names the model here
                f"unable to find '{path}' for model instance '{config['name']}'"
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        validate_io(config, self.session)
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.batched = config.get("max_batch_size", 0) > 0

    def execute(self, requests):
        def run(arrays):
            feed = dict(zip(self.input_names, arrays, strict=True))
            return self.session.run(self.output_names, feed)

        return execute_batched(requests, self.input_names, self.output_names, self.batched, run)
