"""The export steps of ``ExportBestCheckpoint``: export, verify, hand over to the upload.

:class:`ExportSteps` is the part of the callback that does not depend on Lightning's hooks:
the callback (:mod:`lightning_callbacks.export_best`) decides when and on which rank to
export and calls these steps; ``ExportBestCheckpoint.export(model)`` calls them directly
outside fit. They read the callback's arguments (``formats``, ``precision``, ``input_names``,
``log_to_mlflow``, ``tracking_uri``...; see :class:`~lightning_callbacks.export_pipeline.ExportSettings`)
and fill in its result attributes (``exported_paths``, ``verification``, ``model_uri``,
``run_id``, ``registered_version``, ``last_exported_checkpoint``, ``last_exported_score``,
``timings``).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from lightning_utilities.core.rank_zero import rank_zero_warn

from lightning_callbacks.export_pipeline import ExportSettings, export_and_verify
from lightning_callbacks.model_io import bind_example
from lightning_callbacks.packages import LightningPackage
from lightning_callbacks.upload import PendingUpload, export_metadata, mlflow_target, upload
from lightning_callbacks.verify import VerificationResult, raise_on_failure

if TYPE_CHECKING:
    import pytorch_lightning as pl

logger = logging.getLogger(__name__)


class ExportSteps:
    """Export, verify and upload with the callback's arguments (see the module docstring)."""

    #: The Lightning distribution the concrete class is built on.
    lightning: ClassVar[LightningPackage]
    # The callback's arguments these steps read (set by its __init__).
    input_sample: Any
    output_dir: Path | None
    rtol: float
    atol: float
    precision: str
    torchscript_method: str
    log_to_mlflow: bool
    tracking_uri: str | None
    artifact_name: str
    registered_model_name: str | None
    alias: str | None

    def __init__(self) -> None:
        super().__init__()
        self.exported_paths: dict[str, Path] = {}
        self.model_uri: str | None = None
        self.run_id: str | None = None
        self.registered_version: Any = None
        self.verification: list[VerificationResult] = []
        self.last_exported_checkpoint: str | None = None
        self.last_exported_score: float | None = None
        self.timings: dict[str, float] = {}

    def export(
        self,
        pl_module: "pl.LightningModule",
        checkpoint_path: str | None = None,
        score: float | None = None,
        step: int = 0,
        trainer: "pl.Trainer | None" = None,
    ) -> dict[str, Path]:
        """Export, verify and log ``pl_module`` with the weights of ``checkpoint_path``.

        The callback calls the same steps on global rank zero; call this to export outside
        fit (it uploads in the calling thread).

        Args:
            pl_module: the module to export.
            checkpoint_path: a Lightning checkpoint whose ``state_dict`` is exported; None
                exports the current weights (with a warning).
            score: the checkpoint's monitored score, logged as the ``best_model_score`` tag.
            step: step of the verification metrics.
            trainer: used to find an ``MLFlowLogger``.

        Returns:
            The exported files by format (also in :attr:`exported_paths`).

        Raises:
            ExportError: see the class; ``ExportVerificationError`` after the metrics are
                logged when an export does not match eager.
        """
        upload = self._export_and_verify(pl_module, checkpoint_path, score, step, trainer)
        if upload is not None:
            self._upload(upload)
        return self.exported_paths

    def _export_and_verify(
        self,
        pl_module: "pl.LightningModule",
        checkpoint_path: str | None,
        score: float | None,
        step: int,
        trainer: "pl.Trainer | None",
    ) -> PendingUpload | None:
        """Export and verify; return what to upload (None without MLflow).

        Raises:
            ExportVerificationError: after logging the metrics, when verification failed.
        """
        start = time.perf_counter()
        bound = bind_example(pl_module, self.input_sample)
        if checkpoint_path is None:
            rank_zero_warn(
                f"{type(self).__name__}: no checkpoint was saved, exporting the current "
                "weights instead of the best ones.",
                category=RuntimeWarning,
            )
        directory = self._export_dir(checkpoint_path)
        pending = export_and_verify(self._settings(), pl_module, bound, checkpoint_path, directory)
        self.exported_paths, self.verification = pending.paths, list(pending.verification)
        self.timings = {"export_verify": time.perf_counter() - start}
        if not self.log_to_mlflow:
            raise_on_failure(self.verification, rtol=self.rtol, atol=self.atol)
            self._exported(checkpoint_path, score)
            return None
        loggers = trainer.loggers if trainer is not None else []
        tracking_uri, run_id = mlflow_target(loggers, self.lightning.MLFlowLogger, self.tracking_uri)
        pending = dataclasses.replace(
            pending, score=score, step=step, artifact_name=self.artifact_name,
            registered_model_name=self.registered_model_name, alias=self.alias,
            metadata=export_metadata(pending.paths, self.precision, self.torchscript_method),
            tracking_uri=tracking_uri, run_id=run_id,
        )  # fmt: skip
        if not pending.passed:
            self._upload(pending)  # logs the metrics and tags only, then raises
        self._exported(checkpoint_path, score)
        return pending

    def _settings(self) -> ExportSettings:
        """The callback's arguments of the same names."""
        fields = dataclasses.fields(ExportSettings)
        return ExportSettings(**{field.name: getattr(self, field.name) for field in fields})

    def _exported(self, checkpoint_path: str | None, score: float | None) -> None:
        self.last_exported_checkpoint = checkpoint_path or ""
        self.last_exported_score = score

    def _export_dir(self, checkpoint_path: str | None) -> Path:
        if self.output_dir is None:
            self.output_dir = Path(tempfile.mkdtemp(prefix="export-best-"))
            logger.info("%s writes exports to %s", type(self).__name__, self.output_dir)
        stem = Path(checkpoint_path).stem if checkpoint_path else "current-weights"
        return self.output_dir / stem

    def _upload(self, pending: PendingUpload) -> None:
        """Upload ``pending``; raise its verification failure afterwards, if any."""

        def remember_run(run_id: str) -> None:
            self.run_id = run_id

        try:
            result = upload(pending, on_run=remember_run)
        finally:
            if not pending.passed:
                raise_on_failure(pending.verification, rtol=self.rtol, atol=self.atol)
        self.model_uri = result.logged.model_uri
        self.registered_version = result.logged.registered_version
        self.timings["upload"] = result.seconds
        logger.info(
            "%s: %s -> %s in %.2fs", type(self).__name__,
            pending.checkpoint_path or "current weights", self.model_uri, result.seconds,
        )  # fmt: skip
