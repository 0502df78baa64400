"""Lightning callbacks that turn the best checkpoint into deployable, verified artifacts.

``ExportBestCheckpoint`` exports the best checkpoint to TorchScript and ONNX, checks both
against eager PyTorch and logs them to MLflow as one model with both flavors::

    from lightning_callbacks import ExportBestCheckpoint

    export = ExportBestCheckpoint(registered_model_name="regressor", alias="champion")
    trainer = Trainer(callbacks=[ModelCheckpoint(monitor="val_loss"), export])
    trainer.fit(model)
    export.model_uri, export.registered_version, export.exported_paths

A Trainer accepts only callbacks of its own distribution, so there is one class per
distribution, both from the same code:

* ``LightningExportBestCheckpoint`` for ``lightning.pytorch`` (``pip install lightning``);
* ``PytorchLightningExportBestCheckpoint`` for ``pytorch_lightning``;
* ``ExportBestCheckpoint``: the ``pytorch_lightning`` one when it is installed, else the
  ``lightning`` one.

Modules: ``model_io`` (the example bound to ``forward()``, default names, dict/tuple inputs
and outputs flattened), ``export`` (TorchScript/ONNX files), ``dynamic_axes``, ``precision``
(fp16/bf16), ``verify`` (exports vs eager), ``export_pipeline`` (one export, verified),
``log`` and ``mlflow_run`` (MLflow logging, registration, the run), ``upload``, ``packages``
(the two Lightning distributions), ``export_steps`` and ``export_best`` (the callback).
"""

from __future__ import annotations

import importlib.util
from typing import Any

#: Top-level modules that ``pip install 'mlflow-triton[lightning]'`` brings.
_LIGHTNING_EXTRA = ("torch", "lightning", "pytorch_lightning", "onnxruntime", "onnxscript")

try:
    from lightning_callbacks.export import ExportError
    from lightning_callbacks.export_best import ExportBestCheckpointMixin, callback_class
    from lightning_callbacks.log import ExportLoggingError
    from lightning_callbacks.mlflow_run import mask_credentials
    from lightning_callbacks.verify import ExportVerificationError, VerificationResult
except ModuleNotFoundError as err:  # by the missing module's name, not the message
    if (err.name or "").partition(".")[0] not in _LIGHTNING_EXTRA:
        raise
    raise ModuleNotFoundError(
        f"lightning_callbacks needs {err.name}, which is not installed: "
        "pip install 'mlflow-triton[lightning]'",
        name=err.name,
    ) from err

__all__ = [
    "ExportBestCheckpoint",
    "ExportBestCheckpointMixin",
    "ExportError",
    "ExportLoggingError",
    "ExportVerificationError",
    "LightningExportBestCheckpoint",
    "PytorchLightningExportBestCheckpoint",
    "VerificationResult",
    "callback_class",
    "mask_credentials",
]


def __getattr__(name: str) -> Any:
    """Build the callback classes on first use, importing only the distribution asked for."""
    if name == "LightningExportBestCheckpoint":
        return callback_class("lightning")
    if name == "PytorchLightningExportBestCheckpoint":
        return callback_class("pytorch_lightning")
    if name == "ExportBestCheckpoint":
        installed = importlib.util.find_spec("pytorch_lightning") is not None
        return callback_class("pytorch_lightning" if installed else "lightning")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
