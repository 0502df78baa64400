"""The MLflow run the callback logs to: which server, which run, and masked credentials.

The callback may run beside a user's own MLflow setup: the tracking URI is switched for the
duration of a block only (:func:`using_tracking_uri`), an HTTP server is probed with a TCP
connect first (:func:`check_reachable`: MLflow's client retries for minutes), and the run is
the given one, else the active one, else a new one the block ends (:func:`resolved_run`).
Every URI in a message goes through :func:`mask_credentials`::

    with using_tracking_uri(uri), resolved_run(None, run_name="export") as (run_id, started):
        log_run_data(run_id, {"metric": 1.0}, {"tag": "x"})
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import time
from typing import Iterator, Mapping
from urllib.parse import urlparse

#: Seconds to wait for a TCP connection to an HTTP tracking server before giving up.
CONNECT_TIMEOUT_S = 5.0

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&](?:token|access_token|password|passwd|secret|key|signature|sig)=)[^&\s]+",
    re.IGNORECASE,
)


def mask_credentials(text: str) -> str:
    """``text`` with credentials of every URI in it replaced by ``***``.

    Masks the user-info part (``https://user:token@host`` -> ``https://***@host``) and the
    values of secret-looking query parameters (``token``, ``password``, ``sig``...), so
    tracking URIs can appear in messages and log lines.
    """
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    return _SECRET_QUERY.sub(r"\g<key>***", text)


@contextlib.contextmanager
def using_tracking_uri(uri: str | None) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for the block, then restore the previous state.

    ``mlflow.set_tracking_uri`` also writes (or, for None, deletes) ``MLFLOW_TRACKING_URI`` in
    ``os.environ``; both the module-level URI and the variable are restored here.
    """
    import mlflow

    if uri is None or uri == mlflow.get_tracking_uri():
        yield
        return
    # None when nothing was set, so that restoring it leaves MLflow resolving its default.
    previous = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def check_reachable(tracking_uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast when an HTTP(S) tracking server does not accept connections.

    MLflow's REST client retries for minutes; a TCP connect tells in seconds. Other schemes
    (``file:``, ``sqlite:``, ``databricks``) are not checked.

    Raises:
        ConnectionError: naming the URI when the connection is refused or times out.
    """
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            pass
    except OSError as err:
        raise ConnectionError(
            f"MLflow tracking server {mask_credentials(tracking_uri)} is unreachable ({err})"
        ) from err


def log_run_data(
    run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str], step: int = 0
) -> None:
    """Log metrics and tags to ``run_id`` in one batch (non-finite metrics become 1e308)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metric_entities = [
        Metric(key, value if math.isfinite(value) else 1e308, now, step)
        for key, value in metrics.items()
    ]
    MlflowClient().log_batch(
        run_id, metrics=metric_entities, tags=[RunTag(k, str(v)) for k, v in tags.items()]
    )


@contextlib.contextmanager
def resolved_run(run_id: str | None, run_name: str) -> Iterator[tuple[str, bool]]:
    """Yield ``(run_id, started)``: the given run, else the active run, else a new one.

    A run started here is ended on exit (``FAILED`` if the block raised).
    """
    import mlflow

    if run_id is not None:
        yield run_id, False
        return
    active = mlflow.active_run()
    if active is not None:
        yield active.info.run_id, False
        return
    run = mlflow.start_run(run_name=run_name)
    status = "FINISHED"
    try:
        yield run.info.run_id, True
    except BaseException:
        status = "FAILED"
        raise
    finally:
        mlflow.end_run(status=status)
