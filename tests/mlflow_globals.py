"""Point MLflow's fluent API somewhere for a block and put back exactly what was there.

``mlflow.set_tracking_uri`` and ``mlflow.set_experiment`` are process globals: once set they
outrank ``MLFLOW_TRACKING_URI``, and they also write ``MLFLOW_TRACKING_URI`` /
``MLFLOW_EXPERIMENT_ID`` into the environment. "Restoring" with
``set_tracking_uri(get_tracking_uri())`` pins the default file store for every later test in
the worker (a logged model then lands in ``./mlruns``, not on the test stack).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import mlflow
import pytest
from mlflow.tracking import fluent
from mlflow.tracking._tracking_service import utils as tracking_utils

from mlflow_triton.local.environ import preserved_environ

TRACKING_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")


@contextmanager
def tracking_uri(uri: str) -> Iterator[pytest.MonkeyPatch]:
    """MLflow's tracking URI is ``uri`` inside the block; the globals and variables it touches
    (and any experiment set inside) are restored after it. Yields the block's MonkeyPatch."""
    # Not MonkeyPatch.delenv: it records nothing for a variable that is not set, so a variable
    # set inside the block (set_experiment sets MLFLOW_EXPERIMENT_ID) would stay.
    with preserved_environ(TRACKING_VARIABLES), pytest.MonkeyPatch.context() as patch:
        for variable in TRACKING_VARIABLES:
            os.environ.pop(variable, None)
        patch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
        patch.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
        mlflow.set_tracking_uri(uri)
        yield patch
