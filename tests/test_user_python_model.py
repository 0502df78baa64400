"""A user's Python-backend model runs on the embedded stack as on a real Triton, unchanged.

The model is logged exactly as NVIDIA's ``mlflow-triton-plugin`` logs it (an MLmodel with only
``flavors: triton: data: doubler``, written with ``mlflow.models.Model().add_flavor`` and
uploaded with ``mlflow.log_artifacts``), and its ``model.py`` is written the ordinary way
(``import numpy as np``, nothing about ``sys.path``). The stack's Python stub must import this
environment's numpy (<2), which ``triton_python_backend_utils`` works with, not the base
interpreter's: with the wrong numpy every output comes back empty and verification refuses
the model (see ``mlflow_triton.local.stack.triton_environment``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tritonclient.http as httpclient
from mlflow.deployments import get_deploy_client

from mlflow_triton.repository.stores import open_store

DOUBLER_CONFIG = """
name: "doubler_original_name"
backend: "python"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""

DOUBLER_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            out = pb_utils.Tensor("OUT", (2.0 * x + 1.0).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
'''


def log_doubler_like_nvidia_plugin(tmp: Path) -> str:
    """Log ``doubler/`` as NVIDIA's plugin does; return the model URI."""
    root = tmp / "logged"
    folder = root / "doubler"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(textwrap.dedent(DOUBLER_CONFIG).lstrip())
    (folder / "1" / "model.py").write_text(DOUBLER_MODEL.lstrip())
    model = mlflow.models.Model()
    model.add_flavor("triton", data="doubler")
    model.save(str(root / "MLmodel"))
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(root), artifact_path="triton")
    return f"runs:/{run.info.run_id}/triton"


@pytest.mark.integration
def test_nvidia_logged_python_model_with_numpy_deploys_and_answers(stack, unique_name, tmp_path):
    source = log_doubler_like_nvidia_plugin(tmp_path)
    client = get_deploy_client("triton")  # TRITON_URL: every replica of the stack
    result = client.create_deployment(unique_name, source, flavor="triton")  # default settings
    try:
        assert (result["version"], result["flavor"], result["verified"]) == (1, "triton", True)
        # What the user wrote is what Triton runs: model.py byte for byte.
        store = open_store(stack.model_repository, stack.s3_endpoint)
        assert store.read_bytes(f"{unique_name}/1/model.py").decode() == DOUBLER_MODEL.lstrip()

        x = np.arange(12, dtype=np.float32).reshape(4, 3) - 5.5
        for url in stack.triton_urls:
            triton = httpclient.InferenceServerClient(url.removeprefix("http://"))
            tensor = httpclient.InferInput("IN", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            answer = triton.infer(unique_name, [tensor]).as_numpy("OUT")
            np.testing.assert_array_equal(answer, 2.0 * x + 1.0, err_msg=url)
    finally:
        client.delete_deployment(unique_name)
