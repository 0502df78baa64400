"""The plugin's module-level functions MLflow calls beside the client: ``run_local`` (``mlflow
deployments run-local -t triton``) and ``target_help`` (``mlflow deployments help -t triton``)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from mlflow_triton.plugin.client import TritonDeploymentClient
from mlflow_triton.plugin.console import plugin_call


@plugin_call
def run_local(*args: Any, **kwargs: Any) -> None:
    """Serve a model on an embedded local stack (moto S3 + CPU tritonserver) until Ctrl-C.

    ``mlflow deployments run-local`` calls ``run_local(name, model_uri, flavor, config)``, while
    ``mlflow.deployments.base`` documents ``run_local(target, name, model_uri, flavor, config)``;
    both forms are accepted.
    """
    kwargs.pop("target", None)
    if len(args) == 5 or (args and str(args[0]).startswith("triton:/")):
        args = args[1:]  # the documented form, target first
    _run_local(*args, **kwargs)


def _run_local(
    name: str, model_uri: str, flavor: str | None = None, config: Mapping[str, Any] | None = None
) -> None:
    import os
    import tempfile

    from mlflow_triton.local.stack import LocalStack

    workdir = Path(tempfile.mkdtemp(prefix="mlflow-triton-local-"))
    with LocalStack(workdir, with_mlflow=False) as stack:
        overrides = {"instance_kind": "cpu", **dict(config or {}), "model_repository": stack.model_repository}
        os.environ.update({k: v for k, v in stack.env.items() if k != "MLFLOW_TRACKING_URI"})
        client = TritonDeploymentClient(f"triton:/{stack.triton_urls[0]}")
        result = client.create_deployment(name, model_uri, flavor, config=overrides)
        print(f"Serving {name} version {result['version']} at {stack.triton_urls[0]} (Ctrl-C stops)")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    shutil.rmtree(workdir, ignore_errors=True)  # the stack's logs and repository, ours alone


def target_help() -> str:
    return """\
Deploy MLflow models (ONNX or TorchScript) to NVIDIA Triton Inference Server.

Target URI: 'triton' (servers from TRITON_URL, default http://localhost:8000) or
'triton:/http://host:8000[,http://host2:8000]' (replicas sharing one model repository), or
'triton:/dns+http://headless-service:8000' (every address of the name, resolved at each call),
or 'triton:/k8s://namespace/service' (EndpointSlices; needs mlflow-triton[k8s]). Add
'?repository=s3://bucket/prefix' for list/get; without a repository they read Triton's index.
Triton must run with --model-control-mode=explicit and --model-repository pointing at the
same repository as -C model_repository (or TRITON_MODEL_REPO).

Config (-C key=value): model_repository, s3_endpoint_url,
flavor (onnx|torchscript|triton|python_function), python_env (pyfunc: packed env .tar.gz),
max_batch_size (32), dynamic_batching (true), preferred_batch_size, max_queue_delay_microseconds
(200), instance_kind (auto|gpu|cpu), instance_count (1), keep_versions (2),
wait_ready_timeout (300), protocol (http|grpc), verify (true), lease_wait (120), lease_ttl (30),
config_override (file or inline pbtxt), warmup (auto|true|false), accelerator (none|tensorrt|cuda),
precision (fp16|fp32), trt_workspace_bytes, gpus (e.g. 0,1), response_cache (false).

Every version is loaded and verified under a staging name on every replica before any
client sees it; -C verify=false skips the smoke inference (loading is still checked).
instance_kind=auto (the default) uses the GPUs of a server that has them, else its CPU.
An error prints as one line; MLFLOW_TRITON_DEBUG=1 prints the traceback instead.

predict takes any number of rows: they are split into requests of at most the served
max_batch_size, sent concurrently to every replica where the model is READY (a failing
replica's requests go to the others) and joined in input order. --input-path JSON: a key per
input ({"features": [[...], ...]}), records, NVIDIA's {"inputs": {...}}, or the rows of a
single 2-D input. Decoupled models stream through predict_stream (grpc:// URLs).

Examples:
  mlflow deployments create -t triton --name fraud -m models:/fraud@production \\
      -C model_repository=s3://models/triton
  mlflow deployments predict -t triton --name fraud --input-path input.json \\
      --output-path predictions.json
"""
