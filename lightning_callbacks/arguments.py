"""Checks of the callback's arguments, raised as the Lightning package's own exception."""

from __future__ import annotations

import re
from typing import Any

from lightning_callbacks.export import FORMATS, TORCHSCRIPT_METHODS
from lightning_callbacks.onnx_exporters import ONNX_EXPORTERS
from lightning_callbacks.precision import PRECISIONS

#: When the callback exports (``ExportBestCheckpoint(export_on=...)``).
EXPORT_ON: tuple[str, ...] = ("fit_end", "best")  # == export_best.EXPORT_ON


def as_names(value: Any) -> Any:
    """``input_names``/``output_names`` as a tuple; None when empty; a lone string is kept as
    it is, so that :func:`validate_arguments` refuses it (not its characters)."""
    if not value:
        return None
    return value if isinstance(value, str) else tuple(value)


def validate_arguments(callback: Any, error: type[Exception]) -> None:
    """Raise ``error`` (the package's ``MisconfigurationException``) naming a bad argument.

    Raises:
        Exception: ``error`` with the argument, what it got and what it accepts.
    """
    _check_choices(callback, error)
    _check_numbers(callback, error)
    _check_names(callback, error)


def _check_choices(callback: Any, error: type[Exception]) -> None:
    if not callback.formats or any(f not in FORMATS for f in callback.formats):
        raise error(
            f"`formats` must be a non-empty subset of {FORMATS}, got {callback.formats}."
        )
    if len(set(callback.formats)) != len(callback.formats):
        raise error(f"`formats` repeats a format: {callback.formats}.")
    if callback.export_on not in EXPORT_ON:
        raise error(
            f"`export_on` must be one of {EXPORT_ON}, got {callback.export_on!r}."
        )
    if callback.torchscript_method not in TORCHSCRIPT_METHODS:
        raise error(
            f"`torchscript_method` must be one of {TORCHSCRIPT_METHODS}, "
            f"got {callback.torchscript_method!r}."
        )
    if callback.precision not in PRECISIONS:
        raise error(
            f"`precision` must be one of {PRECISIONS}, got {callback.precision!r}."
        )
    if callback.onnx_exporter not in ONNX_EXPORTERS:
        raise error(
            f"`onnx_exporter` must be one of {ONNX_EXPORTERS}, got {callback.onnx_exporter!r}."
        )
    if callback.precision == "bf16" and "onnx" in callback.formats:
        raise error(
            '`precision="bf16"` cannot export ONNX: onnxruntime has no CPU kernels for bf16 '
            "Gemm/MatMul, so the file could be neither verified nor served by Triton's "
            'onnxruntime backend on CPU. Use precision="fp16" for ONNX, or '
            'formats=("torchscript",) for bf16.'
        )


def _check_numbers(callback: Any, error: type[Exception]) -> None:
    for name in ("rtol", "atol"):
        value = getattr(callback, name)
        if not isinstance(value, (int, float)) or value < 0:
            raise error(f"`{name}` must be a number >= 0, got {value!r}.")
    if not isinstance(callback.verify_batch_size, int) or callback.verify_batch_size < 2:
        raise error(
            "`verify_batch_size` must be an int >= 2 (batch size 1 is always verified), "
            f"got {callback.verify_batch_size!r}."
        )
    if callback.opset is not None and (not isinstance(callback.opset, int) or callback.opset < 7):
        raise error(
            f"`opset` must be None or an ONNX opset version >= 7, got {callback.opset!r}."
        )


def _check_names(callback: Any, error: type[Exception]) -> None:
    for name in ("input_names", "output_names"):
        names = getattr(callback, name)
        if isinstance(names, str) or names is not None and (
            not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names)
        ):
            raise error(
                f"`{name}` must be a list of unique non-empty names, e.g. ['tokens'], got {names!r}."
            )
    if callback.alias is not None and callback.registered_model_name is None:
        raise error(
            f"`alias={callback.alias!r}` needs `registered_model_name`: aliases point at "
            "registered model versions."
        )
    if callback.alias is not None and (
        callback.alias.lower() == "latest" or re.fullmatch(r"v\d+", callback.alias, re.IGNORECASE)
    ):
        raise error(
            f"`alias` {callback.alias!r} is reserved by the MLflow Model Registry ('latest' and "
            "'v<number>' name versions); choose another, e.g. 'champion'."
        )
    if callback.registered_model_name is not None and not callback.log_to_mlflow:
        raise error(
            "`registered_model_name` needs `log_to_mlflow=True`, got `log_to_mlflow=False`."
        )
    if not callback.artifact_name or "/" in callback.artifact_name:
        raise error(
            f"`artifact_name` must be a non-empty name without '/', got {callback.artifact_name!r}."
        )
    if callback.dynamic_axes is not None and not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in callback.dynamic_axes.items()
    ):
        raise error(
            "`dynamic_axes` must map tensor names to {axis: name}, e.g. "
            f"{{'tokens': {{1: 'seq'}}}}, got {callback.dynamic_axes!r}."
        )
