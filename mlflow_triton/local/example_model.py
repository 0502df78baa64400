"""The example model ``mlflow-triton dev`` registers, so the README's walkthrough has something to deploy.

A linear layer ``scores = features @ W + b`` (``features``: float32 ``(-1, 4)``, ``scores``:
float32 ``(-1, 3)``) written as an ONNX graph with :mod:`onnx.helper` (no torch needed), logged
with a signature and an input example, registered twice under ``fraud`` with different
weights; the alias ``production`` points at version 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EXAMPLE_MODEL = "fraud"
EXAMPLE_ALIAS = "production"
#: The experiment the example versions are logged in.
EXPERIMENT = "mlflow-triton-dev"
INPUT, OUTPUT = "features", "scores"


def linear_onnx(seed: int) -> onnx.ModelProto:
    """A 4 → 3 linear ONNX model with a dynamic batch axis; weights drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("MatMul", [INPUT, "weight"], ["product"]),
         helper.make_node("Add", ["product", "bias"], [OUTPUT])],
        "linear",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 3])],
        initializer=[weight, bias],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.17+ reads
    onnx.checker.check_model(model)
    return model


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """No run URLs on stdout (where `mlflow-triton dev` prints only the lines to paste) and
    none of MLflow's INFO/WARNING logs (onnxruntime's missing CUDA provider on a CPU machine)."""
    url_variable = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    saved_url, mlflow_logger = os.environ.get(url_variable), logging.getLogger("mlflow")
    saved_level = mlflow_logger.level
    os.environ[url_variable] = "true"
    mlflow_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        mlflow_logger.setLevel(saved_level)
        if saved_url is None:
            os.environ.pop(url_variable, None)
        else:
            os.environ[url_variable] = saved_url


def register_example(name: str = EXAMPLE_MODEL, versions: int = 2, alias: str = EXAMPLE_ALIAS) -> list[str]:
    """Log and register ``versions`` versions of the example under ``name``; alias → version 1.

    Uses the tracking server of ``MLFLOW_TRACKING_URI``.

    Returns:
        The registered versions, e.g. ``["1", "2"]``.
    """
    from mlflow import MlflowClient

    example = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    with _quiet_mlflow():
        registered = _log_versions(name, versions, example)
    MlflowClient().set_registered_model_alias(name, alias, registered[0])
    return registered


def _log_versions(name: str, versions: int, example: np.ndarray) -> list[str]:
    import mlflow
    import mlflow.onnx
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    registered = []
    # Not mlflow.set_experiment: it sets a process global (and MLFLOW_EXPERIMENT_ID) that
    # outlives this call and points the caller's later runs at this server's experiment.
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    for seed in range(1, versions + 1):
        model = linear_onnx(seed)
        weight = numpy_helper.to_array(model.graph.initializer[0])
        bias = numpy_helper.to_array(model.graph.initializer[1])
        signature = infer_signature({INPUT: example}, {OUTPUT: example @ weight + bias})
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-example-{seed}"):
            info = mlflow.onnx.log_model(
                model, name="model", signature=signature, input_example={INPUT: example},
                registered_model_name=name,
                # stated, not inferred: inference runs a subprocess per model (~5 s each)
                pip_requirements=mlflow.onnx.get_default_pip_requirements(),
            )  # fmt: skip
        registered.append(str(info.registered_model_version))
    return registered
