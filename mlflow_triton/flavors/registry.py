"""The flavors the ``triton`` target serves, in order of preference, and the one place a
model's flavor is chosen.

``resolve_model`` reads a model's MLmodel and picks its flavor: the one asked for (``-C
flavor=``), else the first of :data:`FLAVORS` the model has. Everything after works on the
chosen :class:`~mlflow_triton.flavors.base.Flavor` object; a version already published is
verified again with the flavor its provenance names (:func:`get`).
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException

from mlflow_triton.flavors.base import Flavor
from mlflow_triton.flavors.onnx import ONNX
from mlflow_triton.flavors.pyfunc import PYFUNC
from mlflow_triton.flavors.source import LoggedModel, ModelSource, read_logged_model
from mlflow_triton.flavors.torchscript import TORCHSCRIPT
from mlflow_triton.flavors.triton import TRITON

#: In order of preference: a model logged with several is served by the first it has.
FLAVORS: tuple[Flavor, ...] = (ONNX, TORCHSCRIPT, TRITON, PYFUNC)
FLAVOR_NAMES: tuple[str, ...] = tuple(f.name for f in FLAVORS)
#: Every accepted spelling (MLflow's module names too: ``pytorch``, ``pyfunc``) -> name.
FLAVOR_ALIASES: dict[str, str] = {
    spelling: flavor.name for flavor in FLAVORS for spelling in (flavor.name, *flavor.aliases)
}


def normalize_flavor(flavor: str | None) -> str | None:
    """The flavor's name for any accepted spelling (None stays None).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for an unknown flavor, listing the known ones.
    """
    if flavor is None:
        return None
    if flavor not in FLAVOR_ALIASES:
        raise MlflowException.invalid_parameter_value(
            f"Unknown flavor {flavor!r}: the triton target serves {', '.join(FLAVOR_NAMES)} "
            "('pytorch' is accepted for TorchScript, 'pyfunc' for python_function)."
        )
    return FLAVOR_ALIASES[flavor]


def get(flavor: str) -> Flavor:
    """The flavor named ``flavor`` (any accepted spelling)."""
    name = normalize_flavor(flavor)
    return next(f for f in FLAVORS if f.name == name)


def choose(model: LoggedModel, flavor: str | None = None) -> ModelSource:
    """Choose what Triton serves of ``model``: ``flavor`` if given, else the first of
    :data:`FLAVORS` it has.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE when the model has none of them, or lacks
            ``flavor``, naming what it has and the fix.
    """
    wanted = normalize_flavor(flavor)
    available = {f.name: (f, f.artifact_path(model.flavors)) for f in FLAVORS}
    available = {name: found for name, found in available.items() if found[1] is not None}
    if not available:
        raise MlflowException.invalid_parameter_value(
            f"{model.model_uri} has flavors {sorted(model.flavors)} but none the triton target "
            f"serves ({', '.join(FLAVOR_NAMES)}). Log it with mlflow.onnx.log_model, "
            "mlflow.pytorch.log_model, mlflow_triton.flavors.triton.log_model or any MLflow "
            "flavor with a pyfunc."
        )
    if wanted is None:
        wanted = next(name for name in FLAVOR_NAMES if name in available)
    elif wanted not in available:
        raise MlflowException.invalid_parameter_value(
            f"{model.model_uri} has no {wanted} flavor; it has {sorted(available)}. Choose one of "
            "those with -C flavor=... (or --flavor)."
        )
    chosen, path = available[wanted]
    return ModelSource(model, chosen, path)


def resolve_model(model_uri: str, flavor: str | None = None) -> ModelSource:
    """Read the MLmodel of ``model_uri`` (nothing else is fetched) and choose its flavor.

    Raises:
        MlflowException: RESOURCE_DOES_NOT_EXIST if the model cannot be found;
            INVALID_PARAMETER_VALUE if it has no flavor the target serves, or lacks ``flavor``.
    """
    return choose(read_logged_model(model_uri), flavor)
