"""MLflow deployment plugin for NVIDIA Triton Inference Server (target ``triton``).

MLflow finds this module through the ``mlflow.deployments`` entry point ``triton`` and uses
its three public names, as its plugin contract requires:

- :class:`TritonDeploymentClient` publishes MLflow models into a Triton model repository
  (S3 or a local path) and loads them on one or more Triton servers;
- :func:`run_local` serves a model on an embedded local stack (moto S3 + tritonserver);
- :func:`target_help` describes target URIs and configuration keys.
"""

from mlflow_triton.client import TritonDeploymentClient, run_local, target_help

__all__ = ["TritonDeploymentClient", "run_local", "target_help"]
__version__ = "0.1.0"
