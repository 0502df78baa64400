"""Prometheus metrics of the promotion daemons (``watch``, ``serve-webhooks``).

Both daemons turn each :class:`~mlflow_triton.promotion.SyncReport` into metrics through one
:class:`RolloutMetrics`; ``/metrics`` (see :mod:`mlflow_triton.daemons.ops_server`) exposes its registry.

========================================  =========  =========================================
metric                                    type       labels
========================================  =========  =========================================
``mlflow_triton_rollouts_total``          counter    ``deployment``, ``outcome`` (ok/refused/failed)
``mlflow_triton_rollout_duration_seconds`` histogram ``outcome``
``mlflow_triton_serving_version``         gauge      ``deployment``, ``registered_model``
``mlflow_triton_serving_registry_version`` gauge     ``deployment``, ``registered_model``
``mlflow_triton_promotion_lag_seconds``   histogram  ``source`` (webhook/watch)
``mlflow_triton_last_round_timestamp_seconds`` gauge  (none)
========================================  =========  =========================================

A rollout is a reconciliation that tried to make another version serve: ``ok`` when it
serves everywhere, ``refused`` when a replica refused the candidate or it failed verification
(:class:`~mlflow_triton.rollout.switch.VersionRefused`), ``failed`` otherwise (registry, S3 or Triton
unreachable, lease not obtained...). Rounds that change nothing are not rollouts.

The promotion lag runs from the alias move to the round that made the new version serve on
every replica. The MLflow registry does not record when an alias moved (its alias table has
no timestamp), so the start is the event's own timestamp for a webhook delivery, and for
``watch`` the end of the round that first saw the alias point elsewhere, minus that model's
reconciliation time: ``watch`` lag therefore excludes up to one ``--interval`` of polling.

Label values pass :func:`~mlflow_triton.core.masking.mask_secrets` like every other output.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mlflow_triton.core.masking import mask_secrets
from mlflow_triton.promotion.reports import ModelReport, SyncReport

Outcome = Literal["ok", "refused", "failed"]
LagSource = Literal["webhook", "watch"]

#: Rollouts take seconds (small models) to many minutes (large ones, two loads per replica).
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
LAG_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def rollout_outcome(report: ModelReport) -> Outcome | None:
    """``ok``/``refused``/``failed`` for a rollout, None when the round changed nothing."""
    if report.action == "published":
        return "ok"
    if report.action == "failed":
        return "refused" if report.refused else "failed"
    return None


class RolloutMetrics:
    """The daemon's metrics, in their own registry (several daemons may share a process: tests).

    Thread-safe: prometheus_client's metrics are, and the pending-lag table has a lock.

    Args:
        registry: where the metrics are registered; default a new :class:`CollectorRegistry`.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.rollouts = Counter(
            "mlflow_triton_rollouts", "Rollouts by deployment and outcome (ok, refused, failed).",
            ["deployment", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "mlflow_triton_rollout_duration_seconds", "Wall time of a rollout, by outcome.",
            ["outcome"], buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.serving_version = Gauge(
            "mlflow_triton_serving_version", "Triton (repository) version serving per deployment.",
            ["deployment", "registered_model"], registry=self.registry,
        )  # fmt: skip
        self.serving_registry_version = Gauge(
            "mlflow_triton_serving_registry_version", "MLflow registry version serving per deployment.",
            ["deployment", "registered_model"], registry=self.registry,
        )  # fmt: skip
        self.lag = Histogram(
            "mlflow_triton_promotion_lag_seconds",
            "From the alias move (webhook: event time; watch: first seen) to serving on every replica.",
            ["source"], buckets=LAG_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.last_round = Gauge(
            "mlflow_triton_last_round_timestamp_seconds", "Unix time the last reconciliation ended.",
            registry=self.registry,
        )  # fmt: skip
        self._lock = threading.Lock()
        #: (deployment, registry version) -> unix time the move was first known.
        self._pending: dict[tuple[str, str], float] = {}

    def alias_moved(self, deployment: str, registry_version: str | None, at: float) -> None:
        """Remember when an alias move to ``registry_version`` happened (earliest wins)."""
        if registry_version is None:
            return
        key = (deployment, str(registry_version))
        with self._lock:
            self._pending[key] = min(at, self._pending.get(key, at))

    def record(self, report: SyncReport, source: LagSource, now: float | None = None) -> None:
        """Count one round's rollouts, update the serving gauges and observe promotion lags."""
        ended = time.time() if now is None else now
        for model in report.models:
            outcome = rollout_outcome(model)
            deployment, registered_model = mask_secrets(model.deployment), mask_secrets(model.registered_model)
            if outcome is not None:
                self.rollouts.labels(deployment, outcome).inc()
                self.duration.labels(outcome).observe(model.seconds)
            if model.action != "unchanged" and model.registry_version is not None:
                # watch: first sighting of a version that does not serve yet
                self.alias_moved(model.deployment, model.registry_version, ended - model.seconds)
            if model.action in ("published", "unchanged") and model.triton_version is not None:
                labels = (deployment, registered_model)
                self.serving_version.labels(*labels).set(model.triton_version)
                if model.registry_version is not None and str(model.registry_version).isdigit():
                    self.serving_registry_version.labels(*labels).set(int(model.registry_version))
                self._serves(model, source, ended)
        self.last_round.set(ended)

    def _serves(self, model: ModelReport, source: LagSource, now: float) -> None:
        with self._lock:
            moved_at = self._pending.pop((model.deployment, str(model.registry_version)), None)
            for key in [k for k in self._pending if k[0] == model.deployment]:
                del self._pending[key]  # superseded moves never serve
        if moved_at is not None and model.action == "published":
            self.lag.labels(source).observe(max(0.0, now - moved_at))
