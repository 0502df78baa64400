"""Lightning callbacks that turn the best checkpoint into deployable, verified artifacts.

``ExportBestCheckpoint`` exports the best checkpoint to TorchScript and ONNX, checks both
against eager PyTorch and logs them to MLflow as one model with both flavors::

    from lightning_callbacks import ExportBestCheckpoint

    export = ExportBestCheckpoint(registered_model_name="regressor", alias="champion")
    trainer = Trainer(callbacks=[ModelCheckpoint(monitor="val_loss"), export])
    trainer.fit(model)
    export.model_uri, export.registered_version, export.exported_paths

Modules: ``export`` (TorchScript/ONNX files), ``verify`` (exports vs eager), ``log``
(MLflow logging and registration), ``export_best`` (the callback).
"""

from lightning_callbacks.export import ExportError
from lightning_callbacks.export_best import ExportBestCheckpoint
from lightning_callbacks.log import ExportLoggingError
from lightning_callbacks.verify import ExportVerificationError, VerificationResult

__all__ = [
    "ExportBestCheckpoint",
    "ExportError",
    "ExportLoggingError",
    "ExportVerificationError",
    "VerificationResult",
]
