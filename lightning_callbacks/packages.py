"""The Lightning classes a callback needs, from ``lightning.pytorch`` or ``pytorch_lightning``.

The unified ``lightning`` package and the standalone ``pytorch_lightning`` ship the same code
as two separate class hierarchies, and a Trainer refuses callbacks that are not instances of
its own ``Callback``. Like Lightning's ecosystem packages (e.g. ``litmodels``, which offers
``LightningModelCheckpoint`` and ``PytorchLightningModelCheckpoint``), the callback's logic
lives in one mixin and each package gets its own concrete class built on that package's
``Callback``; this module resolves the package-specific pieces the logic refers to::

    package = lightning_package("lightning")     # or "pytorch_lightning"
    package.Callback, package.ModelCheckpoint, package.MLFlowLogger
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Literal, get_args

PackageName = Literal["lightning", "pytorch_lightning"]
PACKAGE_NAMES: tuple[str, ...] = get_args(PackageName)
#: Where the trainer-facing API lives in each distribution.
_ROOTS = {"lightning": "lightning.pytorch", "pytorch_lightning": "pytorch_lightning"}


@dataclass(frozen=True)
class LightningPackage:
    """One Lightning distribution's classes.

    Attributes:
        name: ``lightning`` or ``pytorch_lightning``.
        root: the import path of its trainer API (``lightning.pytorch``...).
        Callback / ModelCheckpoint / LightningModule / Trainer: its public classes.
        MLFlowLogger: its MLflow logger class.
        MisconfigurationException: what it raises for a bad argument.
    """

    name: str
    root: str
    Callback: type
    ModelCheckpoint: type
    LightningModule: type
    Trainer: type
    MLFlowLogger: type
    MisconfigurationException: type


@functools.cache
def lightning_package(name: PackageName) -> LightningPackage:
    """Import ``name``'s trainer API and return its classes.

    Raises:
        ValueError: for a name other than ``lightning`` and ``pytorch_lightning``.
        ModuleNotFoundError: when that distribution is not installed (with the pip command).
    """
    if name not in _ROOTS:
        raise ValueError(f"Lightning package must be one of {PACKAGE_NAMES}, got {name!r}.")
    root = _ROOTS[name]
    try:
        module = importlib.import_module(root)
        callbacks = importlib.import_module(f"{root}.callbacks")
        loggers = importlib.import_module(f"{root}.loggers")
        exceptions = importlib.import_module(f"{root}.utilities.exceptions")
    except ImportError as err:
        raise ModuleNotFoundError(
            f"{name} is not installed: pip install {name.replace('_', '-')}"
        ) from err
    return LightningPackage(
        name=name, root=root, Callback=callbacks.Callback,
        ModelCheckpoint=callbacks.ModelCheckpoint, LightningModule=module.LightningModule,
        Trainer=module.Trainer, MLFlowLogger=loggers.MLFlowLogger,
        MisconfigurationException=exceptions.MisconfigurationException,
    )  # fmt: skip


def package_of(obj: Any) -> LightningPackage | None:
    """The Lightning distribution whose classes ``obj`` (a module or trainer) derives from."""
    for klass in type(obj).__mro__:
        top = klass.__module__.split(".", 1)[0]
        if top in _ROOTS and klass.__name__ in ("LightningModule", "Trainer"):
            return lightning_package(top)  # type: ignore[arg-type]
    return None
