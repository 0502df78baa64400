"""Publishing, activating, repairing and deleting model versions of one repository.

A publish never overwrites a served version. Under the deployment's lease
(:mod:`mlflow_triton.repository.lease`) it first repairs what an interrupted publisher left
(:mod:`mlflow_triton.rollout.repair`), then executes the model's plan as one transaction
(:mod:`mlflow_triton.rollout.transaction`): loaded and verified under a staging name, then
switched in. What must serve first (an ensemble's composing models, the plan's prerequisites)
is published first, each as its own verified rollout, and restored if the model itself is
refused. An interrupt stops it before the switch, or after it once it is recorded
(:mod:`mlflow_triton.rollout.interrupts`). Every caller (the plugin, ``sync``, ``watch``,
webhooks, ``rollback``) goes through here, so every caller gets the same guarantees::

    publisher = ModelPublisher.for_config(config, ["http://t1:8000", "http://t2:8000"])
    result = publisher.publish("fraud", resolve_model("models:/fraud@production"))
"""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)  # fmt: skip

from mlflow_triton.flavors.source import ModelSource
from mlflow_triton.fleet.server import TritonCluster
from mlflow_triton.repository.concurrency import concurrently
from mlflow_triton.repository.history import ServingHistory
from mlflow_triton.repository.layout import staging_name, validate_model_name, version_prefix
from mlflow_triton.repository.lease import Lease
from mlflow_triton.repository.provenance import Provenance, read_provenance, write_provenance
from mlflow_triton.repository.state import DeploymentState, list_deployments, read_state
from mlflow_triton.repository.store import ModelRepositoryStore
from mlflow_triton.repository.stores import open_store
from mlflow_triton.rollout import interrupts, prerequisites, repair
from mlflow_triton.rollout.interrupts import Cancellation, Interrupted
from mlflow_triton.rollout.results import PublishResult, RepairResult, ServingChanged
from mlflow_triton.rollout.switch import Rollout, VersionRefused
from mlflow_triton.rollout.transaction import PublishTransaction, Unchanged
from mlflow_triton.rollout.verification import Candidate, SmokeTest, Verifier
from mlflow_triton.settings.deployment import DeploymentConfig
from mlflow_triton.triton_config.model_config import parse_pbtxt

logger = logging.getLogger(__name__)


class ModelPublisher:
    """Publishes, activates, repairs and deletes model versions in one repository for one cluster.

    Args:
        store / cluster / config: the repository, its replicas and the deployment config
            (``config.lease_ttl`` and ``config.lease_wait`` shape the lease).
        target: where the replicas were found (a target URI), named by the audit tags.
        cancel: set by the command to stop its rollouts at their next safe point before the
            switch (:mod:`mlflow_triton.rollout.interrupts`; ``sync`` on SIGINT/SIGTERM).
    """

    def __init__(
        self, store: ModelRepositoryStore, cluster: TritonCluster, config: DeploymentConfig,
        target: str | None = None, cancel: Cancellation | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.cluster = cluster
        self.config = config
        self.target = target
        self.cancel = cancel

    @classmethod
    def for_config(
        cls, config: DeploymentConfig, triton_urls: Sequence[str], stores: dict[Any, Any] | None = None,
        target: str | None = None, cancel: Cancellation | None = None,
    ) -> "ModelPublisher":
        """The publisher of ``config``'s repository for the replicas ``triton_urls``.

        ``stores`` shares one store (one boto3 client, thread-safe) between the deployments of
        one reconciliation that use the same repository. ``target`` (the target URI the
        replicas were found from) is what the audit tags say the model serves on. ``cancel``:
        see the class.
        """
        key = (config.require_repository(), config.s3_endpoint_url)
        store = stores.get(key) if stores is not None else None
        if store is None:
            store = open_store(*key)
            if stores is not None:
                stores[key] = store
        cluster = TritonCluster(list(triton_urls), config.protocol, timeout_s=config.wait_ready_timeout)
        return cls(store, cluster, config, target, cancel)

    # -- reading -----------------------------------------------------------------------------
    def read_state(self, name: str) -> DeploymentState:
        return read_state(self.store, name)

    def read_provenance(self, name: str, version: int) -> Provenance | None:
        return read_provenance(self.store, name, version)

    def read_history(self, name: str) -> ServingHistory:
        return ServingHistory.load(self.store, name)

    def deployments(self) -> list[DeploymentState]:
        """The state of every deployment in the repository."""
        return list_deployments(self.store)

    # -- the lease ---------------------------------------------------------------------------
    @contextmanager
    def lease(self, name: str, wait_s: float | None = None) -> Iterator[Lease]:
        """Hold the deployment's lease (see :mod:`mlflow_triton.repository.lease`) for the block.

        Args:
            wait_s: how long to wait for a live holder (default: ``config.lease_wait``).
        """
        wait = self.config.lease_wait if wait_s is None else wait_s
        held = Lease(self.store, name, ttl_s=self.config.lease_ttl, wait_s=wait).acquire()
        try:
            yield held
        finally:
            with interrupts.critical(f"releasing the lease of {name!r}"):  # else the next publisher waits its TTL
                held.release()

    def rollout_for(self, name: str, lease: Lease) -> Rollout:
        """The rollout of ``name`` by the holder of ``lease``, with the deployment's history."""
        return Rollout(self.store, self.cluster, name, lease, self.read_history(name), target=self.target)

    def verifier_for(self, provenance: Provenance) -> Verifier:
        """Verifies a version already published (reload, repair, rollback) the way its
        provenance says, reading what it needs (the MLflow model's golden cases or input
        example) only when a candidate is actually loaded."""

        def verify(candidate: Candidate) -> None:
            SmokeTest.for_version(self.store, self.cluster, provenance)(candidate)

        return verify

    # -- publishing --------------------------------------------------------------------------
    def check_servers(self) -> None:
        """Fail before writing anything when a Triton replica does not answer."""
        down = self.cluster.not_live()
        if down:
            raise MlflowException(
                f"Triton unreachable at {', '.join(down)}: nothing was published. Check the target "
                "URI / TRITON_URL and that tritonserver runs with --model-control-mode=explicit.",
                error_code=TEMPORARILY_UNAVAILABLE,
            )

    def publish(
        self, name: str, source: ModelSource, mode: str = "any", verify: bool = True,
        lease_wait_s: float | None = None,
    ) -> PublishResult:  # fmt: skip
        """Publish ``source`` as the serving version of ``name``, verified on every replica.

        Args:
            mode: ``create`` (fail if it exists), ``update`` (fail if missing) or ``any``.
            verify: smoke-test the candidate under its staging name on every replica
                (:class:`~mlflow_triton.rollout.verification.SmokeTest`); without it the
                candidate must still load everywhere before it serves.
            lease_wait_s: how long to wait for another publisher (default: config).

        Raises:
            MlflowException: RESOURCE_ALREADY_EXISTS / RESOURCE_DOES_NOT_EXIST for the mode,
                or when another publisher kept the lease; INVALID_PARAMETER_VALUE for a model
                the flavor cannot serve (nothing written); INTERNAL_ERROR when the version
                was refused (nothing changed); TEMPORARILY_UNAVAILABLE when a replica is down.
        """
        validate_model_name(name)
        interrupts.checkpoint(self.cancel, f"publishing {name!r}")
        self.store.check()
        self.check_servers()
        started = time.monotonic()
        rollout: Rollout | None = None
        serving, known = None, False  # for the outcome of an interrupt
        try:
            with self.lease(name, lease_wait_s) as lease:
                state = self.read_state(name)
                serving, known = state.serving_version, True
                self._check_mode(state, mode)
                rollout = self.rollout_for(name, lease)
                result = self._execute(state, source, rollout, verify)
                if result.changed:
                    result.pruned = repair.prune(self, name, serving=result.version, rollout=rollout)
        except KeyboardInterrupt as err:
            after = "stopped after the switch; the next publish finishes any pruning"
            raise Interrupted.of_rollout(err, name, rollout and rollout.switched, serving, known, after) from err
        if result.changed:
            logger.info("Published %s version %d in %.1fs", name, result.version, time.monotonic() - started)
        return result

    def _execute(self, state: DeploymentState, source: ModelSource, rollout: Rollout, verify: bool) -> PublishResult:
        """Under the lease: repair what an interrupted publisher left, then publish ``source``
        as one transaction, or find that it already serves (pruning is the caller's)."""
        repair.remove_leftovers(self, state, rollout)
        with tempfile.TemporaryDirectory(prefix="mlflow-triton-") as tmp:
            transaction = PublishTransaction(self, state, source, rollout, verify, Path(tmp))
            try:
                plan, located = transaction.plan()
            except Unchanged as unchanged:  # the same files: what must serve first may not be
                composing = prerequisites.publish_prerequisites(self, unchanged.plan, verify) if unchanged.plan else []
                return self._unchanged(state, source, rollout, verify, composing)
            composing = prerequisites.publish_prerequisites(self, plan, verify)
            try:
                provenance, uploaded, copied = prerequisites.publish_restoring(self, transaction, plan, located, composing)
            except Unchanged:
                return self._unchanged(state, source, rollout, verify, composing)
        return PublishResult(
            state.name, provenance.version, state.serving_version, True, bytes_uploaded=uploaded,
            bytes_copied=copied, flavor=provenance.flavor, provenance=provenance, verified=verify,
            composing=composing,
        )  # fmt: skip

    def _check_mode(self, state: DeploymentState, mode: str) -> None:
        if mode == "create" and state.exists:
            raise MlflowException(
                f"Deployment {state.name!r} already exists in {self.store.uri}; use "
                "`mlflow deployments update` to publish a new version.",
                error_code=RESOURCE_ALREADY_EXISTS,
            )
        if mode == "update" and not state.exists:
            raise MlflowException(
                f"Deployment {state.name!r} does not exist in {self.store.uri}; create it first.",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )

    def _unchanged(
        self, state: DeploymentState, source: ModelSource, rollout: Rollout, verify: bool,
        composing: list[PublishResult] | None = None,
    ) -> PublishResult:  # fmt: skip
        """Same bytes, same settings: record the registry coordinates and make sure it serves."""
        name, version, provenance = state.name, state.serving_version, state.provenance
        assert version is not None and provenance is not None
        if source.origin() != provenance.origin:
            provenance = provenance.with_origin(source.origin())
            rollout.lease.check("updating the provenance")
            write_provenance(self.store, provenance)
        repair.reload_missing(self, state, rollout, self.verifier_for(provenance) if verify else None)
        pruned = repair.prune(self, name, serving=version, rollout=rollout)
        logger.info("%s version %d already serves this model: nothing uploaded", name, version)
        return PublishResult(
            name, version, version, False, flavor=provenance.flavor, provenance=provenance, pruned=pruned,
            composing=composing or [],
        )  # fmt: skip

    def discard(self, name: str, version: int) -> bool:
        """Remove an upload that will not serve, and what was transferred of it into the
        staging folder (best effort: the original error matters more); True when it is gone."""
        try:
            repair.delete_version(self.store, name, version)
            self.store.delete_prefix(version_prefix(staging_name(name), version))
            return True
        except Exception as err:
            logger.warning("Could not remove the partial upload %s: %s", self.store.url(f"{name}/{version}/"), err)
            return False

    # -- activate, repair, delete ------------------------------------------------------------------
    def activate(
        self, name: str, version: int, verify: bool = True, lease_wait_s: float | None = None,
        expected_serving: int | None = None,
    ) -> PublishResult:  # fmt: skip
        """Serve an already published ``version`` again (rollback), verified first, with the
        config it had; its prerequisites (an ensemble's logged composing models) are published
        again first from the MLflow model it came from. The history records the version it was
        rolled back from.

        Args:
            expected_serving: the serving version the caller chose ``version`` against; if
                another publisher changed it meanwhile, :class:`ServingChanged` is raised.

        Raises:
            MlflowException: RESOURCE_DOES_NOT_EXIST without that version; INTERNAL_ERROR when
                it is refused (the serving version is untouched).
        """
        self.store.check()
        self.check_servers()
        provenance = self.read_provenance(name, version)
        if provenance is not None and provenance.prerequisites:
            prerequisites.republish_prerequisites(self, provenance, verify)
        rollout: Rollout | None = None
        serving, known = None, False  # for the outcome of an interrupt
        try:
            with self.lease(name, lease_wait_s) as lease:
                # Under the lease nothing changes between these reads: all three at once.
                state, provenance, history = concurrently(
                    lambda: self.read_state(name), lambda: self.read_provenance(name, version),
                    lambda: self.read_history(name),
                )  # fmt: skip
                serving, known = state.serving_version, True
                provenance = self._rollback_target(state, version, provenance, expected_serving)
                rollout = Rollout(self.store, self.cluster, name, lease, history, target=self.target)
                repair.remove_leftovers(self, state, rollout)
                self._switch_back(rollout, state, provenance, verify)
        except KeyboardInterrupt as err:
            raise Interrupted.of_rollout(err, name, rollout and rollout.switched, serving, known, "rolled back") from err
        return PublishResult(
            name, version, state.serving_version, True, flavor=provenance.flavor, provenance=provenance,
            verified=verify,
        )  # fmt: skip

    def _rollback_target(
        self, state: DeploymentState, version: int, provenance: Provenance | None, expected_serving: int | None
    ) -> Provenance:
        """``provenance`` of ``version``, checked against what the caller expected to serve."""
        name = state.name
        if expected_serving is not None and state.serving_version != expected_serving:
            raise ServingChanged(
                f"{name!r} now serves version {state.serving_version}, not {expected_serving}: "
                "another publish happened; choose the rollback target again."
            )
        if version not in state.versions or provenance is None:
            raise MlflowException(
                f"{name!r} has no published version {version} in {self.store.uri} "
                f"(versions: {state.versions}).",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
        return provenance

    def _switch_back(self, rollout: Rollout, state: DeploymentState, provenance: Provenance, verify: bool) -> None:
        version, name = provenance.version, state.name
        message = parse_pbtxt(provenance.config_pbtxt)
        registry = {"registered_model": provenance.registered_model, "registered_version": provenance.registered_version}
        verifier = self.verifier_for(provenance) if verify else None
        try:
            rollout.verify(version, message, provenance, verifier)
            rollout.switch(
                version, message, state.config_bytes, state.serving_version, "rollback",
                verified=verify, rolled_back_from=state.serving_version, **registry,
            )  # fmt: skip
        except VersionRefused as err:
            rollout.refuse(version, "rollback", err.message, **registry)
            raise MlflowException(
                f"Rollback of {name!r} to version {version} was refused; version "
                f"{state.serving_version} still serves. {err.message}",
                error_code=err.error_code,
            ) from err

    def repair(self, name: str, version: int, verify: bool = True, lease_wait_s: float | None = None) -> RepairResult:
        """Make ``version`` (which the repository pins) serve verified on every replica, and
        remove what a dead publisher left (see :mod:`mlflow_triton.rollout.repair`).

        Raises:
            ServingChanged: another publisher pinned another version meanwhile.
        """
        with self.lease(name, lease_wait_s) as lease:
            state = self.read_state(name)
            if state.serving_version != version:
                raise ServingChanged(f"{name!r} was republished while reconciling")
            rollout = self.rollout_for(name, lease)
            result = RepairResult(removed=repair.remove_leftovers(self, state, rollout))
            verifier = self.verifier_for(state.provenance) if verify and state.provenance else None
            result.reloaded = repair.reload_missing(self, state, rollout, verifier)
            result.removed += repair.prune(self, name, serving=version, rollout=rollout)
            return result

    def previous_good(self, name: str, state: DeploymentState | None = None) -> int | None:
        """The version ``rollback`` goes to by default (see :func:`repair.previous_good`)."""
        state = state or self.read_state(name)
        return repair.previous_good(state, self.read_history(name))

    def delete(self, name: str, lease_wait_s: float | None = None) -> None:
        """Unload everywhere, then remove ``NAME/`` and its staging model. Idempotent.

        Holds the lease, so a publish in flight finishes (or its lease expires) first."""
        validate_model_name(name)
        with self.lease(name, lease_wait_s) as lease:
            rollout = self.rollout_for(name, lease)
            if rollout.staging_left_over():
                rollout.clean_staging()
            self.cluster.unload_model(name, ignore_missing=True)
            lease.check("deleting the deployment")
            removed = self.store.delete_prefix(f"{name}/")  # the lease object goes with it
        logger.info("Deleted %s (%d objects) from %s", name, removed, self.store.uri)

