"""``ExportBestCheckpoint``: from the best checkpoint to a verified, registered MLflow model."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence, get_args

from typing_extensions import override

from lightning_callbacks.arguments import as_names, validate_arguments
from lightning_callbacks.checkpoint_weights import checkpoint_exists, find_checkpoint_callback
from lightning_callbacks.export import Format, TorchscriptMethod
from lightning_callbacks.export_steps import ExportSteps
from lightning_callbacks.onnx_exporters import OnnxExporter
from lightning_callbacks.packages import lightning_package
from lightning_callbacks.precision import PRECISIONS, Precision, default_tolerances
from lightning_callbacks.upload import BackgroundUploads, PendingUpload

if TYPE_CHECKING:
    import pytorch_lightning as pl

logger = logging.getLogger(__name__)

ExportOn = Literal["fit_end", "best"]
EXPORT_ON: tuple[str, ...] = get_args(ExportOn)


class ExportBestCheckpointMixin(ExportSteps):
    r"""Export the best checkpoint to TorchScript and ONNX, verify both, log them to MLflow.

    The logic of the callback, independent of the Lightning distribution; use
    :class:`LightningExportBestCheckpoint` (``lightning.pytorch``) or
    :class:`PytorchLightningExportBestCheckpoint` (``pytorch_lightning``), or
    ``lightning_callbacks.ExportBestCheckpoint``, which is whichever of the two is installed
    (``pytorch_lightning`` first).

    When fit ends (or, with ``export_on="best"``, each time the monitored ``ModelCheckpoint``
    saves a new best), the callback:

    1. loads the best checkpoint's ``state_dict`` into the LightningModule (the module's own
       weights, device and training mode are restored afterwards);
    2. exports it on CPU, in eval mode, under ``torch.no_grad()``, in ``precision``:
       TorchScript with ``torch.jit.trace`` (or ``script``) and ONNX with dynamic axes
       (the batch axis, plus ``dynamic_axes`` and the output axes that follow them), with
       tensors named after ``forward()`` (see :mod:`lightning_callbacks.model_io`: keyword
       inputs, dict and list outputs become positional inputs and a tuple in the files, as
       Triton's libtorch backend calls them);
    3. loads each file back and compares it with the fp32 eager model at batch size 1 and
       ``verify_batch_size``, and at two sizes of every other dynamic axis;
    4. logs ONE MLflow model holding both the ``onnx`` and the ``pytorch`` (TorchScript) flavor,
       with a signature whose tensor names are the ONNX names and whose dynamic axes are -1,
       the verification inputs and eager outputs as golden outputs (``golden/``, see
       :mod:`mlflow_triton.core.golden`), which ONNX exporter and opset made the file (the model's
       ``metadata``), verification metrics and the checkpoint's score and path as tags;
       registers it and sets ``alias``.

    Only global rank zero exports and logs. Steps 1-3 take seconds and every rank waits for
    them at a barrier. Step 4 (the upload) does not hold the other ranks: with
    ``export_on="best"`` it runs in a background thread while training goes on (uploads are
    registered in order; a failed upload is raised from the next hook); at fit end rank zero
    uploads after the barrier, while the other ranks finish. Nothing runs during the sanity
    check or with ``fast_dev_run``. Rank zero must hold the full model (DDP is fine; sharded
    strategies such as FSDP or DeepSpeed are not supported). The MLflow run is the
    ``MLFlowLogger``'s, else the active run (e.g. from ``mlflow.pytorch.autolog``), else a
    new run that the callback ends. Credentials in tracking URIs are masked in every message.

    Args:
        formats: what to export: ``"torchscript"`` and/or ``"onnx"``.
        input_sample: example input, batch first: a tensor, a tuple of tensors (forward()'s
            positional arguments) or a dict of tensors (keyword arguments). Defaults to the
            module's ``example_input_array``.
        rtol: relative tolerance of the verification; None: the precision's default (see
            :mod:`lightning_callbacks.precision`).
        atol: absolute tolerance of the verification; None: the precision's default.
        registered_model_name: register the logged model under this name.
        alias: registry alias set on the new version (needs ``registered_model_name``).
        export_on: ``"fit_end"`` exports once when fit ends; ``"best"`` also exports every
            time the best checkpoint changes (checked after validation and at epoch end).
        output_dir: where exports are written, one sub-directory per checkpoint. Defaults to
            a new temporary directory that is kept, so files survive an MLflow outage.
        torchscript_method: ``"trace"`` or ``"script"``; with ``"script"`` the scripted module
            is also what ONNX is exported from, keeping data-dependent control flow.
        opset: ONNX opset version; None uses torch's default.
        verify_batch_size: the larger batch size compared with eager (at least 2).
        checkpoint_callback: the ModelCheckpoint whose best model is exported. Defaults to the
            trainer's first ModelCheckpoint with a ``monitor``, else its first one.
        artifact_name: name of the logged MLflow model.
        input_names: names of the inputs, in forward()'s parameter order (default: the
            parameter names, as ``torch.onnx.export`` names them).
        output_names: names of the outputs, in the order forward returns them (default:
            ``output`` for a tensor, ``output_0``... for a tuple or list, the keys of a dict).
        tracking_uri: MLflow tracking URI. Defaults to the MLFlowLogger's, else MLflow's own.
        log_to_mlflow: set False to only export and verify.
        dynamic_axes: variable axes beyond the batch, by input or output name, e.g.
            ``{"tokens": {1: "seq"}, "scores": {1: "seq"}}``. Axis 0 is always the dynamic
            ``batch``. The same name on several tensors means the same size.
        precision: ``"fp32"``, or ``"fp16"``/``"bf16"`` to export half-precision files
            (verified against the fp32 model).
        background_upload: with ``export_on="best"``, upload from a background thread so that
            validation epochs do not wait for MLflow (True); False uploads in the hook.
        onnx_exporter: ``"torchscript"`` (``dynamo=False``: fast, keeps scripted control
            flow), ``"dynamo"`` (``torch.export`` with ``dynamic_shapes``) or ``"auto"``
            (dynamo, falling back to TorchScript with the reason logged); see
            :mod:`lightning_callbacks.onnx_exporters`. The one used is in the MLflow model's
            ``metadata`` (``onnx_exporter``, ``onnx_opset``).

    Attributes:
        exported_paths: the last exported files by format.
        model_uri: ``models:/<model_id>`` of the last logged model, or None.
        run_id: the MLflow run it was logged to, or None.
        registered_version: the ``ModelVersion`` created, or None.
        verification: the last verification results.
        last_exported_checkpoint: the checkpoint the last export came from ("" for the
            current weights), or None before any export.
        last_exported_score: its monitored score, or None.
        timings: seconds of the last export by phase (``export_verify``, ``upload``, and
            ``hook``: how long the training loop was held).

    Raises:
        MisconfigurationException: (the package's own) on an invalid argument, or in
            ``setup`` when the trainer has no ``ModelCheckpoint``.
        ValueError: if there is no example input or ``dynamic_axes`` names an unknown tensor.
        FileNotFoundError: if the best checkpoint file no longer exists.
        ExportError: if tracing, scripting or export fails.
        ExportVerificationError: if an export does not reproduce eager within tolerance.
        ExportLoggingError: if MLflow cannot be reached or refuses the model; the message
            gives the paths of the exported files, which are kept.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.callbacks import ModelCheckpoint
        >>> from lightning_callbacks import LightningExportBestCheckpoint
        >>> export = LightningExportBestCheckpoint(
        ...     registered_model_name="tagger", alias="champion",
        ...     dynamic_axes={"tokens": {1: "seq"}, "scores": {1: "seq"}},
        ...     input_names=["tokens"], output_names=["scores"])
        >>> trainer = Trainer(callbacks=[ModelCheckpoint(monitor="val_loss"), export])
        >>> # trainer.fit(model) then: export.model_uri, export.registered_version.version
        >>> export.export_on
        'fit_end'
    """

    def __init__(
        self,
        formats: Sequence[Format] = ("torchscript", "onnx"),
        input_sample: Any = None,
        rtol: float | None = None,
        atol: float | None = None,
        registered_model_name: str | None = None,
        alias: str | None = None,
        export_on: ExportOn = "fit_end",
        output_dir: str | Path | None = None,
        torchscript_method: TorchscriptMethod = "trace",
        opset: int | None = None,
        verify_batch_size: int = 7,
        checkpoint_callback: Any = None,
        artifact_name: str = "model",
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        tracking_uri: str | None = None,
        log_to_mlflow: bool = True,
        dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
        precision: Precision = "fp32",
        background_upload: bool = True,
        onnx_exporter: OnnxExporter = "torchscript",
    ) -> None:
        super().__init__()
        self.formats: tuple[Format, ...] = tuple(formats)
        self.input_sample = input_sample
        self.precision = precision
        default_rtol, default_atol = default_tolerances(precision) if precision in PRECISIONS else (0, 0)
        self.rtol = default_rtol if rtol is None else rtol
        self.atol = default_atol if atol is None else atol
        self.registered_model_name = registered_model_name
        self.alias = alias
        self.export_on = export_on
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.torchscript_method = torchscript_method
        self.opset = opset
        self.verify_batch_size = verify_batch_size
        self.checkpoint_callback = checkpoint_callback
        self.artifact_name = artifact_name
        self.input_names = as_names(input_names)
        self.output_names = as_names(output_names)
        self.tracking_uri = tracking_uri
        self.log_to_mlflow = log_to_mlflow
        self.dynamic_axes = {k: dict(v) for k, v in dynamic_axes.items()} if dynamic_axes else None
        self.background_upload = background_upload
        self.onnx_exporter = onnx_exporter
        self._checkpoint: Any = None
        self._last_seen: str | None = None  # same on every rank: decides the barriers
        self._uploads = BackgroundUploads()
        self._validate_init_configuration()

    def _validate_init_configuration(self) -> None:
        validate_arguments(self, self.lightning.MisconfigurationException)

    @property
    @override
    def state_key(self) -> str:
        # Lightning's format (class name + kwargs), with one name for both distributions'
        # classes, so a checkpoint resumes under either package.
        kwargs = {"artifact_name": self.artifact_name, "registered_model_name": self.registered_model_name}
        return f"ExportBestCheckpoint{kwargs!r}"

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "last_exported_checkpoint": self.last_exported_checkpoint,
            "last_exported_score": self.last_exported_score,
            "run_id": self.run_id,
            "model_uri": self.model_uri,
            "registered_version": (
                str(self.registered_version.version) if self.registered_version else None
            ),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_exported_checkpoint = state_dict.get("last_exported_checkpoint")
        self.last_exported_score = state_dict.get("last_exported_score")
        self.run_id = state_dict.get("run_id")
        self.model_uri = state_dict.get("model_uri")
        self._last_seen = self.last_exported_checkpoint

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        self._checkpoint = find_checkpoint_callback(
            trainer, self.checkpoint_callback, type(self).__name__,
            self.lightning.MisconfigurationException,
        )  # fmt: skip

    @override
    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # ModelCheckpoint runs after this hook: this sees bests saved by earlier validations.
        if self.export_on == "best":
            self._maybe_export(trainer, pl_module, final=False)

    @override
    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # Runs after this epoch's validation, so its checkpoint file exists by now.
        if self.export_on == "best":
            self._maybe_export(trainer, pl_module, final=False)

    @override
    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        try:
            self._maybe_export(trainer, pl_module, final=True)
        finally:
            self._uploads.shutdown()

    @override
    def on_exception(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException
    ) -> None:
        self._uploads.shutdown()

    def _skipped(self, trainer: "pl.Trainer") -> bool:
        if trainer.sanity_checking:
            return True
        if trainer.fast_dev_run:
            logger.info("%s: fast_dev_run, nothing exported", type(self).__name__)
            return True
        return False

    def _maybe_export(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", final: bool
    ) -> None:
        if self._checkpoint is None or self._skipped(trainer):
            return
        # best_model_path is synchronised across ranks, so every rank takes the same branch
        # and reaches the same barriers.
        best = self._checkpoint.best_model_path or ""
        if not final and (not best or best == self._last_seen):
            return
        self._last_seen = best
        done = best and best == self.last_exported_checkpoint
        upload: PendingUpload | None = None
        start = time.perf_counter()
        if trainer.is_global_zero:
            self._uploads.raise_failed(wait=False)
            if final and self.export_on == "best" and done:
                logger.info("%s: %s is already exported", type(self).__name__, best)
            else:
                upload = self._rank_zero_export(trainer, pl_module, best, final)
        # Only the export and its verification (seconds) hold the other ranks; the upload
        # (minutes for large models) runs after the barrier.
        trainer.strategy.barrier("ExportBestCheckpoint")
        if trainer.is_global_zero:
            if final:
                self._uploads.raise_failed(wait=True)
            if upload is not None:
                if final or not self.background_upload:
                    self._upload(upload)
                else:
                    self._uploads.submit(lambda: self._upload(upload))
            self.timings["hook"] = time.perf_counter() - start

    def _rank_zero_export(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", best: str, final: bool
    ) -> PendingUpload | None:
        if best and not checkpoint_exists(best):
            if not final:  # e.g. written asynchronously: retry at the next check
                logger.debug("best checkpoint %s not written yet", best)
                return None
            raise FileNotFoundError(
                f"{type(self).__name__}: the best checkpoint {best} no longer exists, so it "
                "cannot be exported.\nHINT: do not delete or move checkpoints during fit, or "
                "point ModelCheckpoint(dirpath=...) at persistent storage."
            )
        score = self._checkpoint.best_model_score if best else None
        return self._export_and_verify(
            pl_module, checkpoint_path=best or None,
            score=float(score) if score is not None else None,
            step=trainer.global_step, trainer=trainer,
        )  # fmt: skip


def callback_class(package: str) -> type:
    """``ExportBestCheckpoint`` built on ``package``'s ``Callback`` (``lightning`` or
    ``pytorch_lightning``); one class per package, created once.

    Raises:
        ModuleNotFoundError: when that package is not installed.
    """
    if package not in _CLASSES:
        lightning = lightning_package(package)  # type: ignore[arg-type]
        prefix = "Lightning" if package == "lightning" else "PytorchLightning"
        _CLASSES[package] = type(
            f"{prefix}ExportBestCheckpoint",
            (ExportBestCheckpointMixin, lightning.Callback),
            {"lightning": lightning, "__module__": __name__, "__doc__": ExportBestCheckpointMixin.__doc__},
        )
    return _CLASSES[package]


_CLASSES: dict[str, type] = {}
