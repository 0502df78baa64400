"""Uploading a verified export to MLflow, in the calling thread or in the background.

Rank zero of the callback uploads after the other ranks have been released, so a slow
upload never holds a collective. With ``export_on="best"`` uploads run in one background
thread (:class:`BackgroundUploads`), one at a time and in order, while training goes on::

    uploads = BackgroundUploads()
    uploads.submit(lambda: upload(pending))   # returns at once
    uploads.raise_failed(wait=False)          # at the next hook: re-raise a failed upload
    uploads.raise_failed(wait=True)           # at fit end: wait for all, re-raise
    uploads.shutdown()

Everything an upload needs is resolved in the training thread first (:func:`mlflow_target`):
MLflow's active run is per thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lightning_callbacks.dynamic_axes import DynamicAxes
from lightning_callbacks.log import ExportLoggingError, LoggedExport, log_model
from lightning_callbacks.mlflow_run import (
    check_reachable,
    log_run_data,
    mask_credentials,
    resolved_run,
    using_tracking_uri,
)
from lightning_callbacks.model_io import IONames
from lightning_callbacks.onnx_exporters import recorded_exporter
from lightning_callbacks.verify import VerificationResult
from mlflow_triton.core.golden import GoldenCases

logger = logging.getLogger(__name__)


@dataclass
class PendingUpload:
    """One verified export and where it goes.

    Attributes:
        paths: exported files by format.
        names: tensor names.
        inputs / outputs: the input example (export precision) and its fp32 eager outputs.
        dynamic_axes: marked -1 in the signature.
        golden: golden outputs logged in ``golden/``.
        verification: the verification results (logged as metrics and tags).
        metadata: the MLmodel's ``metadata``.
        checkpoint_path / score / step: where the weights came from.
        tracking_uri / run_id: resolved in the training thread.
        artifact_name / registered_model_name / alias: how to log and register it.
    """

    paths: dict[str, Path]
    names: IONames
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    dynamic_axes: DynamicAxes
    golden: GoldenCases
    verification: list[VerificationResult]
    metadata: dict[str, Any] = field(default_factory=dict)
    checkpoint_path: str | None = None
    score: float | None = None
    step: int = 0
    tracking_uri: str | None = None
    run_id: str | None = None
    artifact_name: str = "model"
    registered_model_name: str | None = None
    alias: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.verification)


@dataclass
class UploadResult:
    """What an upload did: the run used and the logged model (None when verification failed)."""

    run_id: str | None
    logged: LoggedExport | None
    seconds: float


def run_metrics_and_tags(pending: PendingUpload) -> tuple[dict[str, float], dict[str, str]]:
    """Verification metrics and the checkpoint/verification tags of the run."""
    metrics = {
        f"export_verify_{r.format}_batch{r.batch_size}_max_abs_diff": r.max_abs_diff
        for r in pending.verification
    }
    tags = {
        "best_model_path": pending.checkpoint_path or "",
        "best_model_score": "" if pending.score is None else f"{pending.score:.6g}",
        "export_verification": "passed" if pending.passed else "failed",
    }
    for fmt in pending.paths:
        ok = all(r.passed for r in pending.verification if r.format == fmt)
        tags[f"export_verification_{fmt}"] = "passed" if ok else "failed"
    return metrics, tags


def upload(pending: PendingUpload, on_run: Callable[[str], None] | None = None) -> UploadResult:
    """Log the metrics and tags, then (when verification passed) the model; register it.

    Args:
        pending: what to upload.
        on_run: called with the run id as soon as it is known.

    Raises:
        ExportLoggingError: when MLflow cannot be reached or refuses the model (only when
            verification passed: otherwise the verification failure is the error to raise,
            and the logging error is logged). Credentials in URIs are masked in its message;
            a cause whose text holds credentials is not chained.
    """
    import mlflow

    start = time.perf_counter()
    metrics, tags = run_metrics_and_tags(pending)
    uri = pending.tracking_uri or mlflow.get_tracking_uri()
    run_id = None
    try:
        with using_tracking_uri(uri):
            check_reachable(mlflow.get_tracking_uri())
            with resolved_run(pending.run_id, run_name=f"export-{pending.artifact_name}") as (run_id, _):
                if on_run is not None:
                    on_run(run_id)
                log_run_data(run_id, metrics, tags, step=pending.step)
                if not pending.passed:
                    return UploadResult(run_id, None, time.perf_counter() - start)
                logged = log_model(
                    pending.paths, pending.names, pending.inputs, pending.outputs, run_id,
                    artifact_name=pending.artifact_name,
                    registered_model_name=pending.registered_model_name, alias=pending.alias,
                    dynamic_axes=pending.dynamic_axes, metadata=pending.metadata,
                    golden=pending.golden,
                )  # fmt: skip
    except Exception as err:
        reason = mask_credentials(f"{type(err).__name__}: {err}")
        message = f"the export callback could not log to MLflow at {mask_credentials(uri)}: {reason}"
        error = ExportLoggingError(message, pending.paths)
        logger.error("%s", error)
        if not pending.passed:  # the verification failure is the more important error
            logger.error("(verification failed as well)")
            return UploadResult(run_id, None, time.perf_counter() - start)
        if mask_credentials(str(err)) != str(err):
            raise error from None  # the cause's text holds credentials: keep it out
        raise error from err
    return UploadResult(run_id, logged, time.perf_counter() - start)


def mlflow_target(
    loggers: Sequence[Any], mlflow_logger_class: type, tracking_uri: str | None
) -> tuple[str | None, str | None]:
    """(tracking URI, run id) from ``tracking_uri``, an ``MLFlowLogger`` or the active run.

    Public APIs only: the logger's ``experiment`` (an ``MlflowClient``) gives its
    ``tracking_uri``, ``run_id`` its run; else ``mlflow.active_run()`` of this thread.
    """
    import mlflow

    mlflow_logger = next((lg for lg in loggers if isinstance(lg, mlflow_logger_class)), None)
    if mlflow_logger is None:
        active = mlflow.active_run()
        return tracking_uri, active.info.run_id if active else None
    logger_uri = mlflow_logger.experiment.tracking_uri
    if tracking_uri is not None and tracking_uri != logger_uri:
        return tracking_uri, None
    return logger_uri, mlflow_logger.run_id


def export_metadata(paths: Mapping[str, Path], precision: str, torchscript_method: str) -> dict[str, Any]:
    """What produced the files, for the MLmodel's ``metadata``: which ONNX exporter and opset,
    the precision, the TorchScript method and torch's version."""
    import torch

    metadata: dict[str, Any] = {"export_precision": precision, "torch_version": str(torch.__version__)}
    if "torchscript" in paths:
        metadata["torchscript_method"] = torchscript_method
    if "onnx" in paths:
        import onnx

        model = onnx.load(str(paths["onnx"]), load_external_data=False)
        opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
        metadata["onnx_exporter"] = recorded_exporter(paths["onnx"])
        metadata["onnx_opset"] = opsets.get("ai.onnx")
    return metadata


class BackgroundUploads:
    """One worker thread running uploads in order; failures are re-raised by the caller."""

    def __init__(self) -> None:
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[concurrent.futures.Future] = []

    def submit(self, job: Callable[[], Any]) -> None:
        """Queue ``job``; returns at once."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="export-best-upload"
            )
        self._pending.append(self._executor.submit(job))

    def raise_failed(self, wait: bool) -> None:
        """Re-raise the first failed upload; with ``wait``, wait for every queued one first."""
        if wait:
            concurrent.futures.wait(self._pending)
        finished = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in finished:
            error = future.exception()
            if error is not None:
                raise error

    def shutdown(self) -> None:
        """Wait for queued uploads and stop the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
