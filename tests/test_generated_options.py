"""Unit tests: config_override, warmup and GPU options, generated as protobuf and round-tripped.

Every option is checked by printing the generated ``ModelConfig`` as config.pbtxt and parsing
it back with ``text_format`` (what Triton reads); every refusal is an INVALID_PARAMETER_VALUE
raised before a model is published. A hypothesis property covers random combinations.
"""

from __future__ import annotations

import numpy as np
import pytest
from configs import generated_config, signature_io
from hypothesis import event, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import deserialize_bytes_tensor

from mlflow_triton.settings.deployment import DeploymentConfig
from mlflow_triton.triton_config.acceleration import TRT_ENGINE_CACHE_ROOT
from mlflow_triton.triton_config.model_config import parse_pbtxt, serving_versions, to_pbtxt
from mlflow_triton.triton_config.tensors import TENSOR_NAMES_PARAMETER
from mlflow_triton.triton_config.warmup import plan_warmup, warmup_enabled

SIGNATURE = infer_signature(
    {"x": np.zeros((2, 4), np.float32), "ids": np.zeros((2, 3), np.int64)}, {"y": np.zeros((2, 3), np.float32)}
)
ONNX_IO = signature_io(SIGNATURE, "onnx")
TORCH_IO = signature_io(SIGNATURE, "torchscript")
GPU = mc.ModelInstanceGroup.KIND_GPU


def generate(options: dict, flavor: str = "onnx", warmup=None, version: int = 4) -> mc.ModelConfig:
    """Build from -C strings, print as config.pbtxt, parse back: what Triton would read.

    GPU instances unless ``options`` say otherwise: the GPU options tested here need them
    (the default, ``auto``, is checked in tests/test_config.py)."""
    config = DeploymentConfig.from_dict({"instance_kind": "gpu", **options})
    message = generated_config("fraud", flavor, ONNX_IO if flavor == "onnx" else TORCH_IO, config, version, warmup)
    parsed = parse_pbtxt(to_pbtxt(message))
    assert parsed == message
    return parsed


def refused(options: dict, flavor: str = "onnx", match: str = "") -> str:
    with pytest.raises(MlflowException, match=match) as err:
        generate(options, flavor)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    return err.value.message


# -- GPU options ------------------------------------------------------------------------------
def test_tensorrt_accelerator_round_trip():
    parsed = generate({"accelerator": "tensorrt", "precision": "fp16", "trt_workspace_bytes": "2147483648"})
    [accelerator] = parsed.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16", "max_workspace_size_bytes": "2147483648",
        "trt_engine_cache_enable": "1", "trt_engine_cache_path": f"{TRT_ENGINE_CACHE_ROOT}/fraud",
    }  # fmt: skip
    fp32 = generate({"accelerator": "tensorrt", "precision": "FP32"})
    assert fp32.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"] == "FP32"
    no_precision = generate({"accelerator": "tensorrt"})  # the backend's default (FP32) applies
    assert "precision_mode" not in no_precision.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters


def test_engine_cache_path_is_the_deployment_s_not_the_staging_name():
    """The staging load and the serving load share the engine built while verifying."""
    from mlflow_triton.triton_config.model_config import pin_version

    parsed = generate({"accelerator": "tensorrt"})
    staged = pin_version(parsed, 4)
    staged.name = "_mlflow-triton-staging.fraud"
    path = staged.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["trt_engine_cache_path"]
    assert path == f"{TRT_ENGINE_CACHE_ROOT}/fraud"


def test_cuda_accelerator_gpus_and_response_cache_round_trip():
    parsed = generate({"accelerator": "cuda", "gpus": "0,1", "response_cache": "true"})
    [accelerator] = parsed.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "cuda" and not accelerator.parameters
    [group] = parsed.instance_group
    assert group.kind == GPU and list(group.gpus) == [0, 1]
    assert parsed.response_cache.enable
    plain = generate({})
    assert not plain.HasField("optimization") and not plain.HasField("response_cache")
    assert not plain.instance_group[0].gpus


@pytest.mark.parametrize(
    "options, flavor, match",
    [
        ({"accelerator": "tensorrt", "instance_kind": "cpu"}, "onnx", "needs instance_kind=gpu"),
        ({"accelerator": "cuda", "instance_kind": "auto"}, "onnx", "needs instance_kind=gpu"),
        ({"accelerator": "cuda"}, "torchscript", "backend pytorch"),
        ({"precision": "fp16"}, "onnx", "only apply to the TensorRT"),
        ({"accelerator": "cuda", "trt_workspace_bytes": "1024"}, "onnx", "only apply to the TensorRT"),
        ({"accelerator": "tensorrt", "trt_workspace_bytes": "0"}, "onnx", ">= 1"),
        ({"accelerator": "openvino"}, "onnx", "must be one of none, tensorrt, cuda"),
        ({"precision": "int8", "accelerator": "tensorrt"}, "onnx", "must be one of fp16, fp32"),
        ({"gpus": "0", "instance_kind": "cpu"}, "onnx", "needs instance_kind=gpu"),
        ({"gpus": "0,0"}, "onnx", "distinct"),
        ({"gpus": "-1"}, "onnx", "distinct GPU indices"),
        ({"warmup": "sometimes"}, "onnx", "must be one of auto, true, false"),
        # The override is merged first, then the whole config is checked.
        ({"accelerator": "tensorrt", "config_override": "instance_group { kind: KIND_CPU }"}, "onnx", "KIND_GPU instances only"),
        ({"config_override": "instance_group { kind: KIND_CPU gpus: 0 }"}, "onnx", "Triton refuses GPUs outside KIND_GPU"),
        ({"config_override": 'optimization { execution_accelerators { gpu_execution_accelerator { name: "tvm" } } }'}, "onnx", "unknown to Triton's onnxruntime backend"),
        ({"config_override": 'optimization { execution_accelerators { cpu_execution_accelerator { name: "openvino" } } }', "instance_kind": "cpu"}, "torchscript", "libtorch backend documents none"),
        ({"config_override": "max_batch_size: 2 model_warmup { batch_size: 4 }"}, "onnx", "batch_size 4 > max_batch_size 2"),
    ],
)  # fmt: skip
def test_invalid_combinations_are_refused_with_the_rule(options, flavor, match):
    refused(options, flavor, match)


def test_openvino_on_cpu_for_onnx_is_accepted():
    override = 'optimization { execution_accelerators { cpu_execution_accelerator { name: "openvino" } } }'
    parsed = generate({"instance_kind": "cpu", "config_override": override})
    assert parsed.optimization.execution_accelerators.cpu_execution_accelerator[0].name == "openvino"


# -- config_override ---------------------------------------------------------------------------
def test_override_merges_scalars_and_messages_replaces_lists_and_merges_maps():
    override = """
        max_batch_size: 8
        dynamic_batching { priority_levels: 2 default_priority_level: 1
                           default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 5000 } }
        instance_group [ { kind: KIND_GPU count: 2 gpus: [1]
                           rate_limiter { resources [ { name: "R1" count: 4 } ] priority: 2 } },
                         { kind: KIND_GPU count: 1 gpus: [0] } ]
        model_transaction_policy { decoupled: false }
        parameters { key: "intra_op_thread_count" value { string_value: "2" } }
        response_cache {}
    """
    parsed = generate({"gpus": "0", "config_override": override})
    assert parsed.max_batch_size == 8
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 200  # generated, kept
    assert parsed.dynamic_batching.priority_levels == 2
    assert parsed.dynamic_batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
    # The repeated field replaces the generated one (count 1, gpus [0]) instead of appending.
    assert [(g.count, list(g.gpus)) for g in parsed.instance_group] == [(2, [1]), (1, [0])]
    limiter = parsed.instance_group[0].rate_limiter
    assert limiter.resources[0].name == "R1" and limiter.priority == 2
    assert parsed.HasField("model_transaction_policy") and parsed.HasField("response_cache")
    assert set(parsed.parameters) == {TENSOR_NAMES_PARAMETER, "intra_op_thread_count"}
    assert parsed.name == "fraud" and serving_versions(parsed) == [4]
    assert [t.name for t in parsed.input] == ["x", "ids"]  # untouched repeated fields stay


def test_override_replaces_generated_warmup():
    plan = plan_warmup(ONNX_IO, 32, None, 4)
    override = 'model_warmup { name: "mine" batch_size: 1 inputs { key: "x" value { data_type: TYPE_FP32 dims: 4 random_data: true } } }'
    parsed = generate({"warmup": "true", "config_override": override}, warmup=plan)
    assert [w.name for w in parsed.model_warmup] == ["mine"]


def test_override_from_a_file_and_canonical_text(tmp_path):
    path = tmp_path / "override.pbtxt"
    path.write_text("optimization {\n  priority: PRIORITY_MAX\n}\n")
    from_file = DeploymentConfig.from_dict({"config_override": str(path)})
    inline = DeploymentConfig.from_dict({"config_override": "optimization{priority:PRIORITY_MAX}"})
    assert from_file.config_override == inline.config_override == "optimization {\n  priority: PRIORITY_MAX\n}\n"
    assert from_file.settings("onnx") == inline.settings("onnx")  # same override: a no-op
    changed = DeploymentConfig.from_dict({"config_override": "optimization { priority: PRIORITY_MIN }"})
    assert changed.settings("onnx") != inline.settings("onnx")  # changed override: a new version
    assert from_file.merged({"max_batch_size": 4}).config_override == from_file.config_override
    assert generate({"config_override": str(path)}).optimization.priority == mc.ModelOptimizationPolicy.PRIORITY_MAX


def test_parse_errors_name_the_line_and_column_and_field():
    message = refused({"config_override": "max_batch_size: 8\ndynamic_batching {\n  prefered_batch_size: 4\n}"})
    assert "line 3, column 3" in message and "prefered_batch_size" in message
    message = refused({"config_override": "instance_group { kind: KIND_TPU }"})
    assert "line 1" in message and "KIND_TPU" in message
    assert "neither an existing file" in refused({"config_override": "overide.pbtxt"})


@pytest.mark.parametrize("override", ['name: "other"', "version_policy { latest { num_versions: 2 } }"])
def test_fields_the_plugin_owns_are_refused(override):
    assert "which the plugin owns" in refused({"config_override": override})


def test_new_keys_at_their_defaults_leave_recorded_settings_unchanged():
    """Deployments published before these keys existed stay no-ops."""
    legacy = {"flavor", "max_batch_size", "dynamic_batching", "preferred_batch_size",
              "max_queue_delay_microseconds", "instance_kind", "instance_count"}  # fmt: skip
    assert set(DeploymentConfig().settings("onnx")) == legacy
    assert DeploymentConfig.from_dict({"warmup": "false"}).settings("onnx")["warmup"] == "false"
    assert DeploymentConfig.from_dict({"response_cache": "yes"}).settings("onnx")["response_cache"] is True


# -- warmup ------------------------------------------------------------------------------------
def test_warmup_from_the_input_example_is_cut_to_max_batch_size():
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    ids = np.arange(15, dtype=np.int64).reshape(5, 3)
    plan = plan_warmup(ONNX_IO, 4, {"x": x, "ids": ids}, 7)
    assert plan.files == {"7/input_0": x[:4].tobytes(), "7/input_1": ids[:4].tobytes()}
    parsed = generate({"max_batch_size": "4", "warmup": "true"}, warmup=plan, version=7)
    [warmup] = parsed.model_warmup
    assert (warmup.batch_size, warmup.count) == (4, 1)
    assert warmup.inputs["x"].input_data_file == "7/input_0" and list(warmup.inputs["x"].dims) == [4]
    assert warmup.inputs["ids"].data_type == mc.TYPE_INT64 and list(warmup.inputs["ids"].dims) == [3]


def test_warmup_zeros_set_dynamic_dims_to_one_and_string_files_are_serialized():
    signature = infer_signature({"tokens": np.zeros((2, 5), np.int64)}, {"y": np.zeros((2, 3), np.float32)})
    from mlflow_triton.triton_config.tensors import ModelIO, TensorSpec

    io = ModelIO((TensorSpec("tokens", "TYPE_INT64", (-1, -1), "tokens"),), signature_io(signature, "onnx").outputs)
    [zeros] = plan_warmup(io, 32, None, 1).entries
    assert zeros.batch_size == 1 and list(zeros.inputs["tokens"].dims) == [1] and zeros.inputs["tokens"].zero_data
    [unbatched] = plan_warmup(io, 0, None, 1).entries
    assert list(unbatched.inputs["tokens"].dims) == [1, 1]
    text = ModelIO((TensorSpec("text", "TYPE_STRING", (-1, 1), "text"),), io.outputs)
    words = np.array([["bonjour"], ["hé"]], dtype=object)
    plan = plan_warmup(text, 32, {"text": words}, 2)
    raw = np.frombuffer(plan.files["2/input_0"], dtype=np.uint8)
    assert list(deserialize_bytes_tensor(raw)) == ["bonjour".encode(), "hé".encode()]


def test_warmup_example_that_contradicts_the_model_is_refused():
    with pytest.raises(MlflowException, match="does not fit the model") as err:
        plan_warmup(ONNX_IO, 32, {"x": np.zeros((2, 5), np.float32), "ids": np.zeros((2, 3), np.int64)}, 1)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def test_torchscript_warms_up_twice_for_the_profiling_executor():
    import torch

    from mlflow_triton.flavors.torchscript import WARMUP_REQUESTS

    assert WARMUP_REQUESTS == torch._C._jit_get_num_profiled_runs() + 1 == 2
    [entry] = plan_warmup(TORCH_IO, 32, None, 1, count=2).entries
    assert entry.count == 2


def test_warmup_auto_is_for_gpu_instance_groups():
    assert warmup_enabled("auto", "gpu") and warmup_enabled("auto", "auto") and not warmup_enabled("auto", "cpu")
    assert warmup_enabled("true", "cpu") and not warmup_enabled("false", "gpu")
    assert DeploymentConfig.from_dict({"warmup": True}).warmup == "true"
    assert DeploymentConfig.from_dict({"warmup": "off"}).warmup == "false"


# -- property ----------------------------------------------------------------------------------
VALID_OVERRIDES = [
    None, "", "response_cache { enable: true }", "dynamic_batching { priority_levels: 2 default_priority_level: 1 }",
    "instance_group { kind: KIND_CPU count: 2 }", "instance_group { kind: KIND_GPU gpus: [0, 1] }",
    'parameters { key: "k" value { string_value: "v" } }', "max_batch_size: 0", "model_transaction_policy {}",
    'optimization { execution_accelerators { gpu_execution_accelerator { name: "tensorrt" } } }',
    "instance_group { rate_limiter { priority: 1 } }",
]  # fmt: skip
INVALID_OVERRIDES = ['name: "x"', "version_policy { all {} }", "bogus_field: 1", "max_batch_size: -", "model_warmup { batch_size: 64 }"]


@settings(max_examples=300, deadline=None)
@given(
    # Weighted towards valid values, so that about half the combinations generate a config.
    override=st.sampled_from(VALID_OVERRIDES * 3 + INVALID_OVERRIDES),
    accelerator=st.sampled_from(["none"] * 3 + ["tensorrt", "cuda"]),
    precision=st.sampled_from([None] * 8 + ["fp16", "fp32"]), workspace=st.sampled_from([None] * 8 + [1 << 30, 0]),
    gpus=st.sampled_from([""] * 3 + ["0", "0,1", "1,1"]), response_cache=st.booleans(),
    warmup=st.sampled_from(["auto", "true", "false"]), device=st.sampled_from(["gpu", "gpu", "cpu", "auto"]),
    flavor=st.sampled_from(["onnx", "torchscript"]), example=st.booleans(), max_batch_size=st.sampled_from([0, 1, 8]),
)  # fmt: skip
def test_every_generated_config_parses_back_or_is_refused(
    override, accelerator, precision, workspace, gpus, response_cache, warmup, device, flavor, example, max_batch_size,
):  # fmt: skip
    options = {
        "config_override": override, "accelerator": accelerator, "precision": precision,
        "trt_workspace_bytes": workspace, "gpus": gpus, "response_cache": response_cache, "warmup": warmup,
        "instance_kind": device, "max_batch_size": max_batch_size,
    }  # fmt: skip
    io = ONNX_IO if flavor == "onnx" else TORCH_IO
    try:
        config = DeploymentConfig.from_dict(options)
        sample = {"x": np.ones((3, 4), np.float32), "ids": np.ones((3, 3), np.int64)} if example else None
        plan = plan_warmup(io, max_batch_size, sample, 9) if warmup_enabled(config.warmup, device) else None
        message = generated_config("m", flavor, io, config, 9, plan)
    except MlflowException as err:
        assert err.error_code == "INVALID_PARAMETER_VALUE", err.message
        event("refused")
        return
    event("generated")
    parsed = parse_pbtxt(to_pbtxt(message))
    assert parsed == message and parsed.name == "m" and serving_versions(parsed) == [9]
    assert TENSOR_NAMES_PARAMETER in parsed.parameters
    assert parsed.response_cache.enable == (response_cache or override == "response_cache { enable: true }")
    gpu_accelerators = parsed.optimization.execution_accelerators.gpu_execution_accelerator
    if accelerator != "none":
        assert device == "gpu"
        if "execution_accelerators" not in (override or ""):  # else the override's list replaces ours
            assert [a.name for a in gpu_accelerators] == [accelerator]
    for group in parsed.instance_group:
        assert not group.gpus or group.kind == GPU
        assert not gpu_accelerators or group.kind == GPU
    if plan is not None and "model_warmup" not in (override or ""):
        [entry] = parsed.model_warmup
        assert 1 <= entry.batch_size <= max(parsed.max_batch_size, 1)
        assert set(entry.inputs) == {t.name for t in io.inputs}
    elif plan is None and "model_warmup" not in (override or ""):
        assert not parsed.model_warmup


@pytest.mark.parametrize("flavor", ["torchscript", "triton", "python_function"])
def test_flavors_without_execution_accelerators_refuse_them_in_their_plan(tmp_path, flavor):
    from mlflow_triton.flavors.registry import get
    from mlflow_triton.flavors.source import LoggedModel, ModelSource

    chosen = get(flavor)
    model = LoggedModel("models:/m/1", str(tmp_path), {"pytorch": {}, "triton": {"data": "m"}, "python_function": {}})
    config = DeploymentConfig.from_dict({"accelerator": "tensorrt", "instance_kind": "gpu", "flavor": flavor})
    with pytest.raises(MlflowException, match=f"accelerator=tensorrt is not available for {flavor} models") as err:
        chosen.plan(ModelSource(model, chosen, "m"), config, tmp_path)  # refused before any download
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert list(tmp_path.iterdir()) == []


# -- the publisher refuses before anything is claimed or uploaded -------------------------------
def test_publisher_refuses_a_bad_merged_config_before_claiming_a_version(tmp_path):
    import mlflow.onnx
    import onnx
    from models import Scorer, export_onnx, sample

    from mlflow_triton.flavors.registry import resolve_model
    from mlflow_triton.fleet.server import TritonCluster
    from mlflow_triton.repository.history import ServingHistory
    from mlflow_triton.repository.local_store import LocalStore
    from mlflow_triton.repository.state import read_state
    from mlflow_triton.rollout.publisher import ModelPublisher
    from mlflow_triton.rollout.switch import Rollout
    from mlflow_triton.rollout.transaction import PublishTransaction

    model_dir = tmp_path / "mlflow-model"
    x = sample()
    mlflow.onnx.save_model(
        onnx.load(str(export_onnx(Scorer(), tmp_path / "m.onnx"))), str(model_dir),
        signature=infer_signature({"features": x}, {"scores": np.zeros((5, 3), np.float32)}),
        input_example={"features": x}, pip_requirements=["onnx"],  # no requirement inference (slow)
    )  # fmt: skip
    repository = LocalStore(tmp_path / "repo")
    config = DeploymentConfig.from_dict({
        "model_repository": str(tmp_path / "repo"), "accelerator": "tensorrt", "instance_kind": "gpu",
        "config_override": "instance_group { kind: KIND_CPU }",  # valid alone, refused merged
    })  # fmt: skip
    publisher = ModelPublisher(repository, TritonCluster(["http://127.0.0.1:9"]), config)
    rollout = Rollout(repository, publisher.cluster, "fraud", lease=None, history=ServingHistory("fraud"))
    transaction = PublishTransaction(
        publisher, read_state(repository, "fraud"), resolve_model(str(model_dir)), rollout, True, tmp_path
    )
    with pytest.raises(MlflowException, match="KIND_GPU instances only") as err:
        transaction.publish(*transaction.plan())
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert repository.list_dir("fraud/") == ([], [])  # no version claimed, nothing written
