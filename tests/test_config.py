"""Unit tests: configuration keys, -C string conversion, target URIs, names."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from mlflow_triton.repository.layout import validate_model_name
from mlflow_triton.settings.deployment import DeploymentConfig
from mlflow_triton.settings.target import parse_target_uri


def test_defaults_cover_every_documented_key():
    config = DeploymentConfig.from_dict({})
    # KIND_AUTO: Triton places instances on the GPUs of a server that has them, else on its CPU,
    # so a create without -C loads on the CPU dev stack and on GPU servers alike.
    assert (config.max_batch_size, config.dynamic_batching, config.instance_kind) == (32, True, "auto")
    assert config.keep_versions == 2 and config.protocol == "http"


@pytest.mark.parametrize(
    "given, suggestion",
    [("instance_knd", "'instance_kind'"), ("max_batchsize", "'max_batch_size'"), ("repository", "'model_repository'")],
)
def test_unknown_keys_suggest_the_closest_valid_key(given, suggestion):
    with pytest.raises(MlflowException) as err:
        DeploymentConfig.from_dict({given: "1"})
    first_line = err.value.message.splitlines()[0]
    assert f"{given!r} (did you mean {suggestion}?)" in first_line and "Valid keys: model_repository" in first_line
    with pytest.raises(MlflowException) as err:
        DeploymentConfig.from_dict({"zzz": "1"})  # nothing close: no suggestion, the list
    assert "did you mean" not in err.value.message and "Valid keys:" in err.value.message


def test_cli_strings_are_converted():
    config = DeploymentConfig.from_dict({
        "max_batch_size": "16", "dynamic_batching": "false", "preferred_batch_size": "4,8",
        "instance_kind": "cpu", "instance_count": "2", "wait_ready_timeout": "12.5",
    })  # fmt: skip
    assert config.max_batch_size == 16 and config.dynamic_batching is False
    assert config.preferred_batch_size == [4, 8] and config.instance_count == 2
    assert config.wait_ready_timeout == 12.5
    assert DeploymentConfig.from_dict({"preferred_batch_size": "[2, 4]"}).preferred_batch_size == [2, 4]


@pytest.mark.parametrize(
    "config, message",
    [
        ({"flavour": "onnx"}, "Unknown config key"),
        ({"flavor": "tensorflow"}, "serves onnx, torchscript, triton, python_function"),
        ({"instance_kind": "tpu"}, "must be one of gpu, cpu, auto"),
        ({"max_batch_size": "many"}, "expects int"),
        ({"max_batch_size": -1}, "must be >= 0"),
        ({"dynamic_batching": "maybe"}, "expects bool"),
        ({"preferred_batch_size": "64"}, "between 1 and max_batch_size"),
        ({"s3_endpoint_url": "minio:9000"}, "http(s)://host:port"),
        ({"wait_ready_timeout": 0}, "must be > 0"),
    ],
)
def test_bad_config_is_rejected_with_the_fix(config, message):
    with pytest.raises(MlflowException, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        DeploymentConfig.from_dict(config)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(MlflowException) as err:
        DeploymentConfig.from_dict({"batch": 3})
    assert "max_batch_size" in err.value.message and "model_repository" in err.value.message


def test_repository_from_environment(monkeypatch):
    monkeypatch.setenv("TRITON_MODEL_REPO", "s3://bucket/models")
    assert DeploymentConfig.from_dict({}).require_repository() == "s3://bucket/models"
    monkeypatch.delenv("TRITON_MODEL_REPO")
    with pytest.raises(MlflowException, match="TRITON_MODEL_REPO"):
        DeploymentConfig.from_dict({}).require_repository()


def test_target_uris(monkeypatch):
    monkeypatch.delenv("TRITON_URL", raising=False)
    assert parse_target_uri("triton") == ["http://localhost:8000"]
    monkeypatch.setenv("TRITON_URL", "http://a:1,http://b:2")
    assert parse_target_uri("triton") == ["http://a:1", "http://b:2"]
    assert parse_target_uri("triton:/http://t1:8000/,grpc://t2:8001") == ["http://t1:8000", "grpc://t2:8001"]


@pytest.mark.parametrize("uri", ["tritonx", "triton:", "triton:/", "triton:/t1:8000", "triton:/http://h:port", "sagemaker:/x"])
def test_malformed_target_uri(uri):
    with pytest.raises(MlflowException, match="Invalid|names no Triton") as err:
        parse_target_uri(uri)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize("name", ["fraud", "fraud-detector_v2", "a.b", "X1"])
def test_valid_names(name):
    assert validate_model_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "..", "a..b", "../x", "-x", ".hidden", "with space", "ü", None, "x" * 129])
def test_invalid_names(name):
    with pytest.raises(MlflowException, match="Invalid deployment name"):
        validate_model_name(name)
