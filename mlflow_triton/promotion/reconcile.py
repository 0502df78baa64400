"""Reconciliation: make every replica serve the version each MLflow alias points to.

How one model is reconciled (:func:`sync`; :func:`watch` repeats it, webhooks trigger it):

1. The alias is resolved to a registry version (one registry search for all models).
2. The provenance of the serving repository version (``registered_model``,
   ``registered_version`` and the deployment settings) is compared with it. Equal: the model
   is ``unchanged`` and nothing is downloaded or uploaded. If a replica lost the model (a
   restart in explicit model-control mode) or a dead publisher left its lease behind, the
   deployment is repaired under the lease: leftovers are removed and the missing replicas
   load the version, verified under a staging name first.
3. Different: ``models:/NAME/VERSION`` is published through
   :meth:`~mlflow_triton.rollout.publisher.ModelPublisher.publish`, the code path of
   ``mlflow deployments update``: staged, verified by a
   :class:`~mlflow_triton.rollout.verification.SmokeTest` on every replica, then switched in. A
   refusal leaves the previous version serving, untouched, and the model is ``failed``.

Concurrency: two reconcilers (two ``watch`` processes, a webhook receiver and a cron ``sync``)
may race on one model. The publisher holds the deployment's lease
(:mod:`mlflow_triton.repository.lease`) for the whole publish; the other waits up to ``lease_wait_s``,
then compares provenance again, normally finds the alias version serving and reports
``unchanged``. The repository is never written by two publishers at once.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_STATE, RESOURCE_DOES_NOT_EXIST

from mlflow_triton.flavors.registry import resolve_model
from mlflow_triton.fleet.discovery import resolve_urls
from mlflow_triton.fleet.server import TritonCluster
from mlflow_triton.promotion.reports import ModelReport, SyncReport
from mlflow_triton.promotion.spec import ModelPromotion, PromotionSpec
from mlflow_triton.repository.snapshot import RepositoryCache, RepositorySnapshot
from mlflow_triton.repository.state import DeploymentState
from mlflow_triton.rollout import interrupts
from mlflow_triton.rollout.interrupts import Cancellation, Interrupted
from mlflow_triton.rollout.publisher import ModelPublisher
from mlflow_triton.rollout.results import ServingChanged
from mlflow_triton.rollout.switch import VersionRefused

logger = logging.getLogger(__name__)

#: Models reconciled at once by :func:`sync` (I/O bound: registry, S3 and Triton round trips).
SYNC_WORKERS = 8
#: Times a model is compared again after another publisher changed it under us.
MAX_RECOMPARES = 3


def sync(
    spec: PromotionSpec, registered_model: str | None = None, cache: RepositoryCache | None = None,
    cancel: Cancellation | None = None,
) -> SyncReport:
    """Reconcile once: make every replica serve the version each alias points to.

    Idempotent: when the serving version's provenance already names the alias version (with
    the same settings), nothing is downloaded or uploaded. Failures are reported per model,
    never raised, so one bad model does not stop the others.

    Args:
        spec: what to promote (see :class:`PromotionSpec`).
        registered_model: reconcile only this registered model (a webhook event).
        cache: contents of ``config.pbtxt`` and provenance kept from earlier rounds by ETag
            (:func:`watch` passes its own); without it this round reads them once per model.
        cancel: once set (``mlflow-triton sync`` does on SIGINT/SIGTERM, see
            :func:`mlflow_triton.rollout.interrupts.cooperative`), each model stops at its
            next safe point before its switch and is reported ``interrupted``; switches in
            progress finish.

    Returns:
        A :class:`SyncReport`; ``report.ok`` is False when a model failed (its previous
        version still serves: the publisher rolled back).

    Example::

        report = sync(load_spec(models=["fraud"], alias="production"))
        assert report.ok, [m.error for m in report.failures]
    """
    selected = spec.select(registered_model) if registered_model is not None else spec
    from mlflow import MlflowClient

    round_ = _Round(MlflowClient(), selected, cache, cancel)
    with ThreadPoolExecutor(max_workers=max(1, min(SYNC_WORKERS, len(selected.models)))) as pool:
        return SyncReport(list(pool.map(round_.reconcile, selected.models)))


class _Round:
    """What one reconciliation reads once for all models: every alias (one paginated registry
    search instead of one call per model), the model versions each replica has loaded (one
    statistics call per replica), shared stores, and each repository's listing
    (:mod:`mlflow_triton.repository.snapshot`: one paginated listing instead of three
    requests per model), then the states of its models, many read at once (the round's two
    GETs per model otherwise wait in series behind :data:`SYNC_WORKERS` workers)."""

    def __init__(
        self, registry: Any, spec: PromotionSpec, cache: RepositoryCache | None = None,
        cancel: Cancellation | None = None,
    ) -> None:  # fmt: skip
        self.registry = registry
        self.spec = spec
        self.cancel = cancel
        self.stores: dict[Any, Any] = {}
        self.cache = cache if cache is not None else RepositoryCache()
        self.snapshots: dict[str, RepositorySnapshot | None] = {}
        #: ``(repository, deployment)``: the state read from the round's listing ahead of the
        #: workers, many deployments at once (S3 has no batch GET: overlap hides its latency).
        self.prefetched: dict[tuple[str, str], DeploymentState] = {}
        self._snapshot_lock = threading.Lock()
        self._stores_lock = threading.Lock()
        # Looked up again every round: a replica added or replaced behind a dns+ name is found.
        # A name that does not resolve fails this round's models (reported), not the watch.
        self.discovery_error: MlflowException | None = None
        self.triton_urls: list[str] = []
        self.ready: dict[str, set[tuple[str, str]]] = {}
        try:
            self.triton_urls = resolve_urls(spec.triton_urls)
        except MlflowException as err:
            self.discovery_error = err
        # The three round-wide reads are independent: overlap them.
        with ThreadPoolExecutor(max_workers=3) as pool:
            aliases = pool.submit(_all_aliases, registry, {m.registered_model for m in spec.models})
            ready = pool.submit(TritonCluster(self.triton_urls).ready_models) if self.triton_urls else None
            if len(spec.models) >= 2 and self.discovery_error is None:
                by_repository: dict[Any, list[ModelPromotion]] = {}
                for model in spec.models:
                    by_repository.setdefault(model.config.model_repository, []).append(model)
                list(pool.map(self._prelist, by_repository.values()))
            self.aliases = aliases.result()
            if ready is not None:
                try:
                    self.ready = ready.result()
                except MlflowException as err:
                    self.discovery_error = err

    def _publisher(self, model: ModelPromotion) -> ModelPublisher:
        """``model``'s publisher for this round's replicas; one store (one boto3 client and
        pool) per repository."""
        with self._stores_lock:
            return ModelPublisher.for_config(
                model.config, self.triton_urls, self.stores, target=self.spec.target_uri, cancel=self.cancel
            )

    def _prelist(self, models: list[ModelPromotion]) -> None:
        """List the repository of ``models`` ahead of the workers and read their states, many
        at once; a failure is left for the workers to meet again and report per model."""
        try:
            store = self._publisher(models[0]).store
            snapshot = self._snapshot(store)
        except Exception as err:
            logger.debug("Listing the repository of %s ahead of the round failed: %s", models[0].deployment, err)
            return
        if snapshot is not None:
            states = snapshot.states(m.deployment for m in models)
            self.prefetched.update({(store.uri, name): state for name, state in states.items()})

    def _snapshot(self, store: Any) -> RepositorySnapshot | None:
        """The round's listing of ``store`` (listed once; None if it cannot list recursively)."""
        with self._snapshot_lock:
            if store.uri not in self.snapshots:
                try:
                    self.snapshots[store.uri] = self.cache.snapshot(store)
                except NotImplementedError:
                    self.snapshots[store.uri] = None
            return self.snapshots[store.uri]

    def _listed_state(self, publisher: ModelPublisher, name: str) -> DeploymentState | None:
        """``name``'s state from the round's listing of its repository; None for a one-model
        round, where one listing of the whole repository would cost more than the three
        reads of :meth:`read_state`, or a store that cannot list recursively."""
        if len(self.spec.models) < 2:
            return None
        prefetched = self.prefetched.get((publisher.store.uri, name))
        if prefetched is not None:
            return prefetched
        snapshot = self._snapshot(publisher.store)
        return snapshot.state(name) if snapshot is not None else None

    def reconcile(self, model: ModelPromotion) -> ModelReport:
        started = time.monotonic()
        report = ModelReport(model.registered_model, model.alias, model.deployment)
        try:
            interrupts.checkpoint(self.cancel, f"reconciling {model.deployment!r}")
            if self.discovery_error is not None:
                raise self.discovery_error
            target = _alias_version(self.registry, model, self.aliases)
            report.registry_version = target
            publisher = self._publisher(model)
            listed = self._listed_state(publisher, model.deployment)
            for attempt in range(MAX_RECOMPARES):
                try:
                    # A recompare (another publisher changed the model) reads afresh.
                    self._reconcile_once(publisher, model, target, report, listed if attempt == 0 else None)
                    break
                except ServingChanged:
                    if attempt == MAX_RECOMPARES - 1:
                        raise
                    logger.debug("%s changed while reconciling; comparing again", model.deployment)
        except Interrupted as err:  # reported: the other models stop at their own safe point
            outcome = Interrupted.of(err, model.deployment, False, report.previous_triton_version, known=False).outcome
            report.action = "interrupted"
            report.error = outcome.describe() if outcome else str(err)
            report.triton_version = outcome.serving if outcome and outcome.known else report.previous_triton_version
        except Exception as err:  # reported, not raised: the other models still reconcile
            report.action = "failed"
            report.error = err.message if isinstance(err, MlflowException) else f"{type(err).__name__}: {err}"
            report.refused = _is_refusal(err)
        report.seconds = round(time.monotonic() - started, 3)
        log = {"failed": logger.error, "interrupted": logger.warning}.get(report.action, logger.info)
        log("%s", report.describe())
        return report

    def _reconcile_once(
        self, publisher: ModelPublisher, model: ModelPromotion, target: str, report: ModelReport,
        listed: DeploymentState | None = None,
    ) -> None:
        state = listed if listed is not None else publisher.read_state(model.deployment)
        provenance = state.provenance
        report.previous_triton_version = state.serving_version
        if provenance is not None and provenance.registered_model == model.registered_model:
            report.previous_registry_version = provenance.registered_version
        if _serves(state, model, target):
            report.action = "unchanged"
            report.triton_version = state.serving_version
            if state.leased or publisher.cluster.not_ready(state.name, state.serving_version, self.ready):
                repaired = publisher.repair(
                    model.deployment, state.serving_version, self.spec.smoke_test, self.spec.lease_wait_s
                )
                report.reloaded, report.removed = repaired.reloaded, repaired.removed
            return
        flavor = model.config.flavor or (provenance.flavor if provenance else None)
        refusal = publisher.read_history(model.deployment).refusal_of(
            model.registered_model, target, model.config.settings(flavor)
        )
        if refusal is not None:  # retrying every round would upload and load it every round
            raise MlflowException(
                f"registry version {target} was refused at {refusal['at']} ({refusal.get('reason')}); "
                "not retried. Fix the model and move the alias, or retry it explicitly with "
                "`mlflow deployments update`.",
                error_code=INVALID_STATE,
            )
        source = resolve_model(f"models:/{model.registered_model}/{target}", model.config.flavor)
        result = publisher.publish(
            model.deployment, source, mode="any", verify=self.spec.smoke_test, lease_wait_s=self.spec.lease_wait_s
        )
        # An ensemble whose own files did not change still rolled out a changed composing model.
        changed = result.changed or any(step.changed for step in result.composing)
        report.action = "published" if changed else "unchanged"
        report.triton_version = result.version
        report.bytes_uploaded = result.bytes_uploaded
        report.bytes_copied = result.bytes_copied
        report.removed = result.pruned

def _is_refusal(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) is Triton's or the smoke test's verdict on a candidate."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, VersionRefused):
            return True
        seen = seen.__cause__
    return False


def _all_aliases(registry: Any, names: set[str]) -> dict[str, dict[str, str]]:
    """``{registered model: {alias: version}}`` for ``names``; {} if the search fails."""
    found: dict[str, dict[str, str]] = {}
    if len(names) < 2:
        return found  # one model: get_model_version_by_alias is as cheap
    token = None
    try:
        while True:
            page = registry.search_registered_models(max_results=1000, page_token=token)
            for model in page:
                if model.name in names:
                    found[model.name] = {a: str(v) for a, v in (model.aliases or {}).items()}
            token = page.token
            if not token:
                return found
    except MlflowException as err:
        logger.debug("Registry search failed (%s); resolving aliases one by one", err.message)
        return {}


def _alias_version(
    registry: Any, model: ModelPromotion, aliases: dict[str, dict[str, str]] | None = None
) -> str:
    known = (aliases or {}).get(model.registered_model, {})
    if model.alias in known:
        return known[model.alias]
    try:
        version = registry.get_model_version_by_alias(model.registered_model, model.alias)
    except MlflowException as err:
        raise MlflowException(
            f"Cannot resolve alias {model.alias!r} of registered model {model.registered_model!r}: "
            f"{err.message}",
            error_code=RESOURCE_DOES_NOT_EXIST,
        ) from err
    return str(version.version)


def _serves(state: DeploymentState, model: ModelPromotion, target: str) -> bool:
    """Cheap check, from provenance only: does the alias version serve, with these settings?"""
    provenance = state.provenance
    if state.serving_version is None or provenance is None:
        return False
    if provenance.registered_model != model.registered_model:
        return False
    if str(provenance.registered_version) != target:
        return False
    flavor = model.config.flavor or provenance.flavor
    return dict(provenance.settings) == model.config.settings(flavor)


def watch(
    spec: PromotionSpec,
    interval_s: float = 30.0,
    stop_event: threading.Event | None = None,
    max_rounds: int | None = None,
    on_report: Callable[[SyncReport], None] | None = None,
) -> SyncReport | None:
    """Reconcile every ``interval_s`` seconds until ``stop_event`` is set.

    Setting ``stop_event`` (the CLI does on SIGINT/SIGTERM) never interrupts a round: the
    current publish finishes, or rolls back, before :func:`watch` returns.

    Args:
        spec: what to promote.
        interval_s: pause between the end of a round and the start of the next (> 0).
        stop_event: set it to stop; default: run until ``max_rounds``.
        max_rounds: stop after this many rounds (None: no limit).
        on_report: called with each round's :class:`SyncReport`.

    Returns:
        The last round's report (None if stopped before the first round).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for ``interval_s <= 0`` or ``max_rounds < 1``.
    """
    if interval_s <= 0:
        raise MlflowException.invalid_parameter_value(f"interval must be > 0 seconds, got {interval_s}.")
    if max_rounds is not None and max_rounds < 1:
        raise MlflowException.invalid_parameter_value(f"max_rounds must be >= 1, got {max_rounds}.")
    stop_event = stop_event or threading.Event()
    cache = RepositoryCache()  # a no-op round then reads no object whose ETag did not change
    last: SyncReport | None = None
    rounds = 0
    while not stop_event.is_set():
        last = sync(spec, cache=cache)
        rounds += 1
        if on_report is not None:
            on_report(last)
        if max_rounds is not None and rounds >= max_rounds:
            break
        stop_event.wait(interval_s)
    logger.info("Watch stopped after %d round(s)", rounds)
    return last
