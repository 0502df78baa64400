"""What the embedded stack needs beyond the plugin (the ``[local]`` extra), checked up front.

The plugin itself needs only ``mlflow-skinny`` (it is a client of a tracking server). The
embedded stack runs servers: ``moto`` (S3), ``tritonserver`` from the ``nvidia-pytriton``
wheel, the full ``mlflow`` distribution (``mlflow server``: Flask, SQLAlchemy, alembic), and
its Python stand-ins for Triton's backends run models with ``onnxruntime`` and ``torch``.
Without them the servers would fail one by one, each in its own log; this check names them
all at once, with the command that installs them::

    require_local_extra(with_mlflow=True)   # ModuleNotFoundError: ... pip install 'mlflow-triton[local]'
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

__all__ = ["LOCAL_EXTRA_INSTALL", "missing_local_packages", "require_local_extra"]

LOCAL_EXTRA_INSTALL = "pip install 'mlflow-triton[local]'"
#: (importable module, distribution that provides it, what the stack uses it for)
_MODULES = (
    ("moto", "moto[server]", "the S3 server"),
    ("pytriton", "nvidia-pytriton", "tritonserver"),
    ("onnxruntime", "onnxruntime", "the onnxruntime backend stand-in"),
    ("torch", "torch", "the pytorch backend stand-in"),
)


def _missing(with_mlflow: bool) -> list[tuple[str, str]]:
    missing = [(module, distribution) for module, distribution, _ in _MODULES if importlib.util.find_spec(module) is None]
    if with_mlflow:
        try:  # mlflow-skinny provides the same `mlflow` module, without what `mlflow server` needs
            importlib.metadata.distribution("mlflow")
        except importlib.metadata.PackageNotFoundError:
            missing.append(("mlflow.server", "mlflow (the full distribution, for `mlflow server`)"))
    return missing


def missing_local_packages(with_mlflow: bool = True) -> list[str]:
    """The distributions of the ``[local]`` extra that are not installed, e.g. ``["moto[server]"]``."""
    return [distribution for _, distribution in _missing(with_mlflow)]


def require_local_extra(with_mlflow: bool = True) -> None:
    """Raise unless everything the embedded stack starts is installed.

    Args:
        with_mlflow: the stack also runs an MLflow tracking server.

    Raises:
        ModuleNotFoundError: naming the missing packages and ``pip install 'mlflow-triton[local]'``
            (``name``: the first missing module).
    """
    missing = _missing(with_mlflow)
    if missing:
        names = [distribution for _, distribution in missing]
        raise ModuleNotFoundError(
            f"The local stack (mlflow-triton dev, make demo, run-local) needs {', '.join(names)}, "
            f"which {'is' if len(names) == 1 else 'are'} not installed: {LOCAL_EXTRA_INSTALL}",
            name=missing[0][0],
        )
