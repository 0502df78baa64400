"""MLflow deployment plugin for NVIDIA Triton Inference Server (target ``triton``).

MLflow finds this module through the ``mlflow.deployments`` entry point ``triton`` and uses
its three public names, as its plugin contract requires:

- :class:`TritonDeploymentClient` publishes MLflow models into a Triton model repository
  (S3 or a local path) and loads them on one or more Triton servers;
- :func:`run_local` serves a model on an embedded local stack (moto S3 + tritonserver);
- :func:`target_help` describes target URIs and configuration keys.

They are imported on first use, so that importing a lower layer (``mlflow_triton.core``,
``mlflow_triton.repository``...) does not import the whole plugin. The layers are listed in
``pyproject.toml`` (the import-linter ``layers`` contract).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow_triton.plugin.client import TritonDeploymentClient
    from mlflow_triton.plugin.entry_points import run_local, target_help

__all__ = ["TritonDeploymentClient", "run_local", "target_help"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "TritonDeploymentClient":
        from mlflow_triton.plugin import client

        return client.TritonDeploymentClient
    if name in __all__:
        from mlflow_triton.plugin import entry_points

        return getattr(entry_points, name)
    raise AttributeError(f"module 'mlflow_triton' has no attribute {name!r}")


def __dir__() -> list[str]:
    # MLflow's plugin manager finds the three names with inspect.getmembers, which asks dir().
    return sorted([*globals(), *__all__])
