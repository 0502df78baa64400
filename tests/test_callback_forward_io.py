"""The export callback exports what the user wrote, from ``fit`` to a Triton answer.

Three modules (see ``io_models.py``), each trained under ``lightning.pytorch`` and under
``pytorch_lightning``, registered, deployed on the shared local stack (ONNX, and TorchScript
whose Triton tensors are ``INPUT__i``/``OUTPUT__j``) and asked:

* ``forward(self, tokens)``, no ``input_names``, ``dynamic_axes`` on ``tokens`` only: the input
  is ``tokens`` and the output's sequence axis follows; served at lengths 3 and 11;
* ``forward(self, input_ids, attention_mask)`` with a dict example, returning
  ``{"logits", "pooled"}``: predict takes and returns those names;
* a module returning a tuple: outputs ``output_0`` and ``output_1``.

The ``lightning`` models are served on both artifact paths, the ``pytorch_lightning`` ones on
the TorchScript path (see :data:`FLAVORS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from io_models import VOCAB, best_eager, train
from mlflow import MlflowClient
from mlflow.deployments import get_deploy_client
from mlflow.models import Model

from mlflow_triton.core.golden import GOLDEN_DIR, GoldenCases

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:'torch.load' received a zip file"),
]
PACKAGES = ("lightning", "pytorch_lightning")
#: Artifact paths deployed per package: the two callback classes run the same export code, so
#: ``pytorch_lightning`` models take only the TorchScript path (INPUT__i/OUTPUT__j mapping),
#: which keeps the file to 9 deployments.
FLAVORS = {"lightning": ("onnx", "torchscript"), "pytorch_lightning": ("torchscript",)}
ENCODER_AXES = {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}


@pytest.fixture(scope="module")
def trained(stack, tmp_path_factory):
    """``get(kind, package, **callback kwargs)`` -> (callback, registered name); fits once each."""
    cache: dict[tuple[str, str], tuple] = {}

    def get(kind: str, package: str, **export_kwargs):
        if (kind, package) not in cache:
            name = f"{kind}-{package.replace('_', '-')}-{tmp_path_factory.getbasetemp().name}"
            workdir = tmp_path_factory.mktemp(f"{kind}-{package}")
            export, _ = train(
                kind, package, workdir, registered_model_name=name, alias="candidate", **export_kwargs
            )
            cache[kind, package] = (export, name)
        return cache[kind, package]

    return get


def serve(name: str, flavor: str, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Deploy ``models:/name@candidate`` with ``flavor`` and return Triton's answers."""
    client = get_deploy_client("triton")
    deployment = f"{name}-{flavor}"
    config = {"flavor": flavor, "instance_kind": "cpu"}
    client.create_deployment(deployment, f"models:/{name}@candidate", config=config)
    answers = []
    for inputs in requests:
        predictions = client.predict(deployment, inputs)["predictions"]
        answers.append({key: np.asarray(value) for key, value in predictions.items()})
    return answers


def signature_of(name: str) -> tuple[list[tuple], list[tuple]]:
    """``(name, shape)`` of every signature input and output of ``models:/name@candidate``."""
    signature = Model.load(f"models:/{name}@candidate").signature
    return (
        [(spec.name, spec.shape) for spec in signature.inputs.inputs],
        [(spec.name, spec.shape) for spec in signature.outputs.inputs],
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_input_named_after_forward_serves_two_sequence_lengths(trained, package):
    export, name = trained("projector", package, dynamic_axes={"tokens": {0: "batch", 1: "seq"}})
    assert signature_of(name) == ([("tokens", (-1, -1, 6))], [("output", (-1, -1, 3))])
    eager = best_eager("projector", package, export.last_exported_checkpoint)
    rng = np.random.default_rng(3)
    requests = [{"tokens": rng.normal(size=(2, length, 6)).astype(np.float32)} for length in (3, 11)]
    for flavor in FLAVORS[package]:
        for inputs, answer in zip(requests, serve(name, flavor, requests), strict=True):
            expected = eager(torch.from_numpy(inputs["tokens"])).detach().numpy()
            assert list(answer) == ["output"]
            np.testing.assert_allclose(answer["output"], expected, rtol=1e-4, atol=1e-5, err_msg=flavor)


def encoder_requests() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(4)
    requests = []
    for length in (4, 9):
        mask = np.ones((3, length), dtype=np.int64)
        mask[1, length // 2 :] = 0  # a padded row
        ids = rng.integers(0, VOCAB, size=(3, length)).astype(np.int64)
        requests.append({"input_ids": ids, "attention_mask": mask})
    return requests


@pytest.mark.parametrize("package", PACKAGES)
def test_keyword_inputs_and_dict_outputs_keep_their_names_on_both_artifact_paths(trained, package, tmp_path):
    import mlflow.pyfunc

    export, name = trained("encoder", package, dynamic_axes=ENCODER_AXES)
    inputs, outputs = signature_of(name)
    assert inputs == [("input_ids", (-1, -1)), ("attention_mask", (-1, -1))]
    assert outputs == [("logits", (-1, -1, 2)), ("pooled", (-1, 8))]
    version = MlflowClient().get_model_version_by_alias(name, "candidate")
    model_uri = MlflowClient().get_model_version_download_uri(name, version.version)
    golden = GoldenCases.load(Path(mlflow.artifacts.download_artifacts(f"{model_uri}/{GOLDEN_DIR}", dst_path=str(tmp_path))))
    assert [sorted(case) for case, _ in golden] == [["attention_mask", "input_ids"]] * 2
    assert [sorted(answer) for _, answer in golden] == [["logits", "pooled"]] * 2

    eager = best_eager("encoder", package, export.last_exported_checkpoint)
    requests = encoder_requests()
    expected = [
        {k: v.detach().numpy() for k, v in eager(**{k: torch.from_numpy(v) for k, v in r.items()}).items()}
        for r in requests
    ]
    local = mlflow.pyfunc.load_model(f"models:/{name}@candidate").predict(requests[1])
    assert sorted(local) == ["logits", "pooled"]
    np.testing.assert_allclose(local["logits"], expected[1]["logits"], rtol=1e-4, atol=1e-5)
    for flavor in FLAVORS[package]:
        for answer, want in zip(serve(name, flavor, requests), expected, strict=True):
            assert sorted(answer) == ["logits", "pooled"]
            for key in ("logits", "pooled"):
                np.testing.assert_allclose(answer[key], want[key], rtol=1e-4, atol=1e-5, err_msg=f"{flavor} {key}")


@pytest.mark.parametrize("package", PACKAGES)
def test_tuple_outputs_are_numbered(trained, package):
    export, name = trained("two_heads", package)
    assert signature_of(name) == ([("features", (-1, 4))], [("output_0", (-1, 3)), ("output_1", (-1, 3))])
    eager = best_eager("two_heads", package, export.last_exported_checkpoint)
    features = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    expected = [t.detach().numpy() for t in eager(torch.from_numpy(features))]
    for flavor in FLAVORS[package]:
        (answer,) = serve(name, flavor, [{"features": features}])
        assert list(answer) == ["output_0", "output_1"]
        for key, want in zip(("output_0", "output_1"), expected, strict=True):
            np.testing.assert_allclose(answer[key], want, rtol=1e-4, atol=1e-5, err_msg=f"{flavor} {key}")
