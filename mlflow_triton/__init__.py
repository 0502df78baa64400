"""MLflow deployment plugin for NVIDIA Triton Inference Server (target ``triton``).

MLflow finds this module through the ``mlflow.deployments`` entry point ``triton`` and uses
its three public names, as its plugin contract requires:

- :class:`TritonDeploymentClient` publishes MLflow models into a Triton model repository
  (S3 or a local path) and loads them on one or more Triton servers;
- :func:`run_local` serves a model on an embedded local stack (moto S3 + tritonserver);
- :func:`target_help` describes target URIs and configuration keys.

Imports are lazy so that ``import mlflow_triton`` stays cheap (the Python-based Triton
backends import ``mlflow_triton.local.backends`` inside the server).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["TritonDeploymentClient", "run_local", "target_help"]

if TYPE_CHECKING:
    from mlflow_triton.client import TritonDeploymentClient, run_local, target_help


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mlflow_triton import client

        return getattr(client, name)
    raise AttributeError(f"module 'mlflow_triton' has no attribute {name!r}")
