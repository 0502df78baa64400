"""``ExportBestCheckpoint``: from the best checkpoint to a verified, registered MLflow model."""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence, get_args

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_callbacks.export import (
    FORMATS,
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    TORCHSCRIPT_METHODS,
    Example,
    Format,
    IONames,
    TorchscriptMethod,
    check_batch_first,
    export_mode,
    export_onnx,
    export_torchscript,
    resolve_example,
    take_rows,
    to_torchscript,
)
from lightning_callbacks.log import (
    INPUT_EXAMPLE_ROWS,
    ExportLoggingError,
    LoggedExport,
    check_reachable,
    log_model,
    log_run_data,
    resolved_run,
    using_tracking_uri,
)
from lightning_callbacks.verify import (
    VerificationResult,
    raise_on_failure,
    run_eager,
    verify_exports,
)

logger = logging.getLogger(__name__)

ExportOn = Literal["fit_end", "best"]
EXPORT_ON: tuple[str, ...] = get_args(ExportOn)


class ExportBestCheckpoint(Callback):
    r"""Export the best checkpoint to TorchScript and ONNX, verify both, log them to MLflow.

    When fit ends (or, with ``export_on="best"``, each time the monitored
    :class:`~pytorch_lightning.callbacks.ModelCheckpoint` saves a new best), the callback:

    1. loads the best checkpoint's ``state_dict`` into the LightningModule (the module's own
       weights, device and training mode are restored afterwards);
    2. exports it on CPU, in eval mode, under ``torch.no_grad()``: TorchScript with
       ``torch.jit.trace`` (or ``script``) and ONNX with a dynamic batch axis;
    3. loads each file back and compares it with eager at batch size 1 and
       ``verify_batch_size``;
    4. logs ONE MLflow model holding both the ``onnx`` and the ``pytorch`` (TorchScript) flavor,
       with a signature whose tensor names are the ONNX names, plus verification metrics and
       the checkpoint's score and path as tags; registers it and sets ``alias``.

    Only global rank zero exports and logs; every rank then waits at a barrier. Nothing runs
    during the sanity check or with ``fast_dev_run``. Rank zero must hold the full model
    (DDP is fine; sharded strategies such as FSDP or DeepSpeed are not supported). Any error
    is raised from the hook, so with ``export_on="best"`` a failed export stops training. The MLflow run is the
    :class:`~pytorch_lightning.loggers.MLFlowLogger`'s, else the active run (e.g. from
    ``mlflow.pytorch.autolog``), else a new run that the callback ends.

    Args:
        formats: what to export: ``"torchscript"`` and/or ``"onnx"``.
        input_sample: example input, a tensor or tuple of tensors, batch first. Defaults to
            the module's ``example_input_array``.
        rtol: relative tolerance of the verification.
        atol: absolute tolerance of the verification.
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
        input_names: names of the inputs (default ``input`` or ``input_0``, ``input_1``...).
        output_names: names of the outputs (default ``output`` or ``output_0``...).
        tracking_uri: MLflow tracking URI. Defaults to the MLFlowLogger's, else MLflow's own.
        log_to_mlflow: set False to only export and verify.

    Attributes:
        exported_paths: the last exported files by format.
        model_uri: ``models:/<model_id>`` of the last logged model, or None.
        run_id: the MLflow run it was logged to, or None.
        registered_version: the ``ModelVersion`` created, or None.
        verification: the last verification results.
        last_exported_checkpoint: the checkpoint the last export came from ("" for the
            current weights), or None before any export.
        last_exported_score: its monitored score, or None.

    Raises:
        MisconfigurationException: on an invalid argument, or in ``setup`` when the trainer
            has no ``ModelCheckpoint``.
        ValueError: if there is no example input.
        FileNotFoundError: if the best checkpoint file no longer exists.
        ExportError: if tracing, scripting or export fails.
        ExportVerificationError: if an export does not reproduce eager within tolerance.
        ExportLoggingError: if MLflow cannot be reached or refuses the model; the message
            gives the paths of the exported files, which are kept.

    Example::

        >>> from pytorch_lightning import Trainer
        >>> from pytorch_lightning.callbacks import ModelCheckpoint
        >>> from lightning_callbacks import ExportBestCheckpoint
        >>> export = ExportBestCheckpoint(registered_model_name="regressor", alias="champion")
        >>> trainer = Trainer(callbacks=[ModelCheckpoint(monitor="val_loss"), export])
        >>> # trainer.fit(model) then: export.model_uri, export.registered_version.version,
        >>> # export.exported_paths["onnx"]
        >>> export.export_on
        'fit_end'
    """

    def __init__(
        self,
        formats: Sequence[Format] = ("torchscript", "onnx"),
        input_sample: Any = None,
        rtol: float = 1e-3,
        atol: float = 1e-5,
        registered_model_name: str | None = None,
        alias: str | None = None,
        export_on: ExportOn = "fit_end",
        output_dir: str | Path | None = None,
        torchscript_method: TorchscriptMethod = "trace",
        opset: int | None = None,
        verify_batch_size: int = 7,
        checkpoint_callback: ModelCheckpoint | None = None,
        artifact_name: str = "model",
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        tracking_uri: str | None = None,
        log_to_mlflow: bool = True,
    ) -> None:
        super().__init__()
        self.formats: tuple[Format, ...] = tuple(formats)
        self.input_sample = input_sample
        self.rtol = rtol
        self.atol = atol
        self.registered_model_name = registered_model_name
        self.alias = alias
        self.export_on = export_on
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.torchscript_method = torchscript_method
        self.opset = opset
        self.verify_batch_size = verify_batch_size
        self.checkpoint_callback = checkpoint_callback
        self.artifact_name = artifact_name
        self.input_names = tuple(input_names) if input_names else None
        self.output_names = tuple(output_names) if output_names else None
        self.tracking_uri = tracking_uri
        self.log_to_mlflow = log_to_mlflow

        self.exported_paths: dict[str, Path] = {}
        self.model_uri: str | None = None
        self.run_id: str | None = None
        self.registered_version: Any = None
        self.verification: list[VerificationResult] = []
        self.last_exported_checkpoint: str | None = None
        self.last_exported_score: float | None = None
        self._checkpoint: ModelCheckpoint | None = None
        self._last_seen: str | None = None  # same on every rank: decides the barriers
        self._validate_init_configuration()

    def _validate_init_configuration(self) -> None:
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise MisconfigurationException(
                f"`formats` must be a non-empty subset of {FORMATS}, got {self.formats}."
            )
        if len(set(self.formats)) != len(self.formats):
            raise MisconfigurationException(f"`formats` repeats a format: {self.formats}.")
        if self.export_on not in EXPORT_ON:
            raise MisconfigurationException(
                f"`export_on` must be one of {EXPORT_ON}, got {self.export_on!r}."
            )
        if self.torchscript_method not in TORCHSCRIPT_METHODS:
            raise MisconfigurationException(
                f"`torchscript_method` must be one of {TORCHSCRIPT_METHODS}, "
                f"got {self.torchscript_method!r}."
            )
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise MisconfigurationException(f"`{name}` must be a number >= 0, got {value!r}.")
        if not isinstance(self.verify_batch_size, int) or self.verify_batch_size < 2:
            raise MisconfigurationException(
                "`verify_batch_size` must be an int >= 2 (batch size 1 is always verified), "
                f"got {self.verify_batch_size!r}."
            )
        if self.opset is not None and (not isinstance(self.opset, int) or self.opset < 7):
            raise MisconfigurationException(
                f"`opset` must be None or an ONNX opset version >= 7, got {self.opset!r}."
            )
        if self.alias is not None and self.registered_model_name is None:
            raise MisconfigurationException(
                f"`alias={self.alias!r}` needs `registered_model_name`: aliases point at "
                "registered model versions."
            )
        if self.alias is not None and (
            self.alias.lower() == "latest" or re.fullmatch(r"v\d+", self.alias, re.IGNORECASE)
        ):
            raise MisconfigurationException(
                f"`alias` {self.alias!r} is reserved by the MLflow Model Registry ('latest' and "
                "'v<number>' name versions); choose another, e.g. 'champion'."
            )
        if self.registered_model_name is not None and not self.log_to_mlflow:
            raise MisconfigurationException(
                "`registered_model_name` needs `log_to_mlflow=True`, got `log_to_mlflow=False`."
            )
        if not self.artifact_name or "/" in self.artifact_name:
            raise MisconfigurationException(
                f"`artifact_name` must be a non-empty name without '/', got {self.artifact_name!r}."
            )

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            artifact_name=self.artifact_name, registered_model_name=self.registered_model_name
        )

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
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.checkpoint_callback is not None:
            if self.checkpoint_callback not in trainer.checkpoint_callbacks:
                raise MisconfigurationException(
                    f"{type(self).__name__}(checkpoint_callback=...) was given a ModelCheckpoint "
                    "that is not in the Trainer's callbacks.\nHINT: pass the same instance to "
                    "Trainer(callbacks=[...])."
                )
            self._checkpoint = self.checkpoint_callback
            return
        candidates = trainer.checkpoint_callbacks
        if not candidates:
            raise MisconfigurationException(
                f"{type(self).__name__} exports the best checkpoint, but the Trainer has no "
                "ModelCheckpoint callback.\nHINT: add "
                "`ModelCheckpoint(monitor='val_loss')` to Trainer(callbacks=[...]) and keep "
                "`enable_checkpointing=True`."
            )
        monitored = [c for c in candidates if getattr(c, "monitor", None)]
        self._checkpoint = (monitored or candidates)[0]
        if len(candidates) > 1:
            logger.info(
                "%s follows ModelCheckpoint(monitor=%r, dirpath=%s) of %d; pass "
                "checkpoint_callback= to choose another",
                type(self).__name__, self._checkpoint.monitor, self._checkpoint.dirpath,
                len(candidates),
            )  # fmt: skip

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # ModelCheckpoint runs after this hook: this sees bests saved by earlier validations.
        if self.export_on == "best":
            self._maybe_export(trainer, pl_module, final=False)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after this epoch's validation, so its checkpoint file exists by now.
        if self.export_on == "best":
            self._maybe_export(trainer, pl_module, final=False)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_export(trainer, pl_module, final=True)

    def _skipped(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return True
        if trainer.fast_dev_run:
            logger.info("%s: fast_dev_run, nothing exported", type(self).__name__)
            return True
        return False

    def _maybe_export(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, final: bool
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
        if trainer.is_global_zero:
            if final and self.export_on == "best" and done:
                logger.info("%s: %s is already exported", type(self).__name__, best)
            else:
                self._rank_zero_export(trainer, pl_module, best, final)
        trainer.strategy.barrier("ExportBestCheckpoint")

    def _rank_zero_export(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, best: str, final: bool
    ) -> None:
        if best and not get_filesystem(best).exists(best):
            if not final:  # e.g. written asynchronously: retry at the next check
                logger.debug("best checkpoint %s not written yet", best)
                return
            raise FileNotFoundError(
                f"{type(self).__name__}: the best checkpoint {best} no longer exists, so it "
                "cannot be exported.\nHINT: do not delete or move checkpoints during fit, or "
                "point ModelCheckpoint(dirpath=...) at persistent storage."
            )
        score = self._checkpoint.best_model_score if best else None
        self.export(
            pl_module, checkpoint_path=best or None,
            score=float(score) if score is not None else None,
            step=trainer.global_step, trainer=trainer,
        )  # fmt: skip

    def export(
        self,
        pl_module: pl.LightningModule,
        checkpoint_path: str | None = None,
        score: float | None = None,
        step: int = 0,
        trainer: pl.Trainer | None = None,
    ) -> dict[str, Path]:
        """Export, verify and log ``pl_module`` with the weights of ``checkpoint_path``.

        The callback calls this on global rank zero; call it directly to export outside fit.

        Args:
            pl_module: the module to export.
            checkpoint_path: a Lightning checkpoint whose ``state_dict`` is exported; None
                exports the current weights (with a warning).
            score: the checkpoint's monitored score, logged as the ``best_model_score`` tag.
            step: step of the verification metrics.
            trainer: used to find an ``MLFlowLogger``.

        Returns:
            The exported files by format (also in :attr:`exported_paths`).
        """
        example = resolve_example(pl_module, self.input_sample)
        if checkpoint_path is None:
            rank_zero_warn(
                f"{type(self).__name__}: no checkpoint was saved, exporting the current "
                "weights instead of the best ones.",
                category=RuntimeWarning,
            )
        directory = self._export_dir(checkpoint_path)
        with _weights_from(pl_module, checkpoint_path), export_mode(pl_module):
            names = IONames.resolve(pl_module, example, self.input_names, self.output_names)
            check_batch_first(pl_module, example, names)
            paths = self._export_files(pl_module, example, names, directory)
            self.exported_paths = paths
            self.verification = verify_exports(
                pl_module, paths, example, names, rtol=self.rtol, atol=self.atol,
                batch_sizes=(1, self.verify_batch_size),
            )  # fmt: skip
            sample = take_rows(example, min(example[0].shape[0], INPUT_EXAMPLE_ROWS))
            outputs = run_eager(pl_module, sample)
        if self.log_to_mlflow:
            inputs = [t.numpy() for t in sample]
            self._log(paths, names, inputs, outputs, checkpoint_path, score, step, trainer)
        raise_on_failure(self.verification, rtol=self.rtol, atol=self.atol)
        self.last_exported_checkpoint = checkpoint_path or ""
        self.last_exported_score = score
        return paths

    def _export_dir(self, checkpoint_path: str | None) -> Path:
        if self.output_dir is None:
            self.output_dir = Path(tempfile.mkdtemp(prefix="export-best-"))
            logger.info("%s writes exports to %s", type(self).__name__, self.output_dir)
        stem = Path(checkpoint_path).stem if checkpoint_path else "current-weights"
        return self.output_dir / stem

    def _export_files(
        self, module: pl.LightningModule, example: Example, names: IONames, directory: Path
    ) -> dict[str, Path]:
        paths: dict[str, Path] = {}
        onnx_source: torch.nn.Module = module
        if "torchscript" in self.formats:
            paths["torchscript"], compiled = export_torchscript(
                module, example, directory / TORCHSCRIPT_FILE, self.torchscript_method
            )
            if self.torchscript_method == "script":
                onnx_source = compiled
        elif self.torchscript_method == "script":
            onnx_source = to_torchscript(module, example, "script")
        if "onnx" in self.formats:
            paths["onnx"] = export_onnx(
                onnx_source, example, directory / ONNX_FILE, names, opset=self.opset
            )
        return paths

    def _log(
        self,
        paths: dict[str, Path],
        names: IONames,
        inputs: list,
        outputs: list,
        checkpoint_path: str | None,
        score: float | None,
        step: int,
        trainer: pl.Trainer | None,
    ) -> None:
        import mlflow

        uri, run_id = self._mlflow_target(trainer)
        passed = all(r.passed for r in self.verification)
        metrics = {
            f"export_verify_{r.format}_batch{r.batch_size}_max_abs_diff": r.max_abs_diff
            for r in self.verification
        }
        tags = {
            "best_model_path": checkpoint_path or "",
            "best_model_score": "" if score is None else f"{score:.6g}",
            "export_verification": "passed" if passed else "failed",
        }
        for fmt in paths:
            ok = all(r.passed for r in self.verification if r.format == fmt)
            tags[f"export_verification_{fmt}"] = "passed" if ok else "failed"
        start = time.perf_counter()
        uri = uri or mlflow.get_tracking_uri()
        try:
            with using_tracking_uri(uri):
                check_reachable(mlflow.get_tracking_uri())
                with resolved_run(run_id, run_name=f"export-{self.artifact_name}") as (run, _):
                    self.run_id = run
                    log_run_data(run, metrics, tags, step=step)
                    if not passed:
                        return  # the caller raises ExportVerificationError
                    logged: LoggedExport = log_model(
                        paths, names, inputs, outputs, run, artifact_name=self.artifact_name,
                        registered_model_name=self.registered_model_name, alias=self.alias,
                    )  # fmt: skip
        except Exception as err:
            message = (
                f"{type(self).__name__} could not log to MLflow at {uri}: {err}"
            )
            error = ExportLoggingError(message, paths)
            logger.error("%s", error)
            if not passed:  # the verification failure is the more important error
                logger.error("(verification failed as well)")
                return
            raise error from err
        self.model_uri = logged.model_uri
        self.registered_version = logged.registered_version
        logger.info(
            "%s: %s -> %s in %.2fs", type(self).__name__, checkpoint_path or "current weights",
            self.model_uri, time.perf_counter() - start,
        )  # fmt: skip

    def _mlflow_target(self, trainer: pl.Trainer | None) -> tuple[str | None, str | None]:
        """(tracking URI, run id) from the arguments and the trainer's MLFlowLogger, if any."""
        from pytorch_lightning.loggers import MLFlowLogger

        loggers = trainer.loggers if trainer is not None else []
        mlflow_logger = next((lg for lg in loggers if isinstance(lg, MLFlowLogger)), None)
        if mlflow_logger is None:
            return self.tracking_uri, None
        logger_uri = getattr(mlflow_logger, "_tracking_uri", None)
        if self.tracking_uri is not None and self.tracking_uri != logger_uri:
            return self.tracking_uri, None
        return logger_uri, mlflow_logger.run_id


@contextlib.contextmanager
def _weights_from(module: torch.nn.Module, checkpoint_path: str | None) -> Iterator[None]:
    """Load ``checkpoint_path``'s ``state_dict`` into ``module``; restore the weights on exit."""
    if checkpoint_path is None:
        yield
        return
    # The checkpoint was written by this Trainer's ModelCheckpoint: full (non weights-only)
    # loading is safe and also accepts hyper-parameters of custom types.
    with get_filesystem(checkpoint_path).open(checkpoint_path, "rb") as f:
        checkpoint = torch.load(f, map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if state is None:
        raise ValueError(
            f"{checkpoint_path} is not a Lightning checkpoint: it has no 'state_dict' entry."
        )
    original = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        module.load_state_dict(original)
        raise ValueError(
            f"The weights in {checkpoint_path} do not fit {type(module).__name__}: {err}"
        ) from err
    logger.info("loaded weights of %s", checkpoint_path)
    try:
        yield
    finally:
        module.load_state_dict(original)
