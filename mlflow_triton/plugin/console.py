"""What a plugin call shows on a terminal: the outcome, not MLflow's progress bars or tracebacks.

Every public method of :class:`~mlflow_triton.plugin.client.TritonDeploymentClient` runs under
:func:`plugin_call`, which does two things:

* **No download progress bars** unless asked: MLflow draws a tqdm bar for every artifact
  download (the MLmodel file, the input example, golden outputs...), several per ``create``.
  They are off for the duration of the call unless ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` is
  set (either way) or the ``mlflow_triton`` logger is enabled for DEBUG.
* **One line per error under MLflow's CLI.** ``mlflow deployments`` does not catch the
  plugin's exceptions: Python prints a 30-60 line traceback with the useful sentence last.
  When the call runs inside a click command (MLflow's CLI, or any click program) and
  ``MLFLOW_TRITON_DEBUG`` is not set, an error is re-raised as :class:`DeploymentCommandError`,
  which is both the same :class:`~mlflow.exceptions.MlflowException` (message and error code)
  and a :class:`click.ClickException`, so click prints ``Error: <message>`` and a hint, and
  exits 1. Python callers outside click get the original exception, unchanged.

What the plugin cannot change: errors MLflow's CLI raises before or after calling the plugin
(an unreadable ``--input-path``, an unknown target) keep MLflow's own format, and MLflow's
commands have no ``--debug`` option, hence the environment variable.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import click
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, ErrorCode

from mlflow_triton.core.masking import mask_data, scrub_exception

__all__ = ["DEBUG_ENV", "DeploymentCommandError", "plugin_call", "quiet_downloads"]

#: Set (to anything but empty) to get Python's traceback instead of the one-line error.
DEBUG_ENV = "MLFLOW_TRITON_DEBUG"
_PLUGIN_LOGGER = "mlflow_triton"

F = TypeVar("F", bound=Callable[..., Any])


class DeploymentCommandError(MlflowException, click.ClickException):
    """An error of the ``triton`` target as a click command shows it: ``Error: <message>``.

    Still an :class:`MlflowException` with the original error code, chained (``from``) to the
    original exception.
    """

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message, error_code=ErrorCode.Value(error_code))

    @classmethod
    def from_error(cls, err: Exception) -> "DeploymentCommandError":
        if isinstance(err, MlflowException):
            return cls(err.message, err.error_code)
        return cls(f"{type(err).__name__}: {err}", ErrorCode.Name(INTERNAL_ERROR))

    def show(self, file: Any = None) -> None:
        super().show(file)
        click.echo(f"Hint: set {DEBUG_ENV}=1 to see the traceback.", err=True)


_progress_lock = threading.Lock()
_quiet_calls = 0


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """Turn MLflow's artifact progress bars off while the block runs, unless the user chose
    (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` set) or asked for DEBUG logs of ``mlflow_triton``.

    Nested and concurrent blocks share one setting, removed when the last one ends.
    """
    global _quiet_calls
    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    with _progress_lock:
        ours = _quiet_calls > 0
        if not ours and (name in os.environ or logging.getLogger(_PLUGIN_LOGGER).isEnabledFor(logging.DEBUG)):
            quiet = False
        else:
            quiet = True
            _quiet_calls += 1
            os.environ[name] = "false"
    try:
        yield
    finally:
        if quiet:
            with _progress_lock:
                _quiet_calls -= 1
                if _quiet_calls == 0:
                    os.environ.pop(name, None)


def _shown_by_click() -> bool:
    return click.get_current_context(silent=True) is not None and not os.environ.get(DEBUG_ENV)


def plugin_call(method: F) -> F:
    """Run a public plugin method quietly (:func:`quiet_downloads`) with credentials masked in
    its errors and descriptions (:mod:`mlflow_triton.core.masking`); inside a click command,
    raise its errors as :class:`DeploymentCommandError` (one line, see the module docstring)."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            with quiet_downloads():
                result = method(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as err:
            scrub_exception(err)  # in place: the type and traceback stay, credentials go
            if not _shown_by_click():
                raise
            raise DeploymentCommandError.from_error(err) from err
        # Descriptions (get, list, create's result) may quote URLs; predictions are numbers
        # (PredictionsResponse, a dict subclass, is returned as it is).
        return mask_data(result) if type(result) in (dict, list) else result

    return call  # type: ignore[return-value]
