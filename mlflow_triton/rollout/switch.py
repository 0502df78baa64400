"""Make one published version serve on every replica: verified first, or nothing changes.

Triton answers a request that names no version with the highest loaded version, so loading a
candidate beside the serving version would expose it at once. A rollout therefore never loads
an unverified version under the deployment's own name:

1. **stage**: the version's files are in a staging model, ``_mlflow-triton-staging.NAME/<version>/``,
   with the same config under that name. Names starting with ``_`` are never deployments
   (:func:`~mlflow_triton.repository.layout.validate_model_name`), so no client asks for it.
   A new upload is transferred there directly, and its version folder ``NAME/<version>/`` is
   built from it (a server-side copy, then the provenance) while the staging model loads and
   is verified: the copy costs no time of its own. A version already in the repository
   (rollback, replica heal, an upload reused) is copied there first (server-side on S3, hard
   links on a local disk).
2. **verify**: every replica loads the staging model; it must become READY and pass the
   :data:`~mlflow_triton.rollout.verification.Verifier` (a smoke inference by default). A failure is
   recorded as ``refused`` in the serving history and the candidate is removed: clients never
   saw it. The staging model is unloaded and deleted in every case.
3. **switch**: after a fencing check of the lease, the history records the version as
   ``staged``, ``config.pbtxt`` is rewritten to pin it, each replica reloads (Triton does it
   without failing in-flight requests: the old version serves until the new one is READY),
   and the history records it as ``serving``.

Once the switch has begun, SIGINT and SIGTERM wait until it is finished (or rolled back) and
recorded (:mod:`mlflow_triton.rollout.interrupts`); the staging model is removed whatever
interrupts the verification.

What the switch loads is the same bytes with the same config as what was verified, only under
the deployment's name. If a replica still refuses it there (it crashed, ran out of memory),
the previous config is restored and every replica that did not refuse it (it switched, or
its load timed out and may still finish) is reloaded on the previous version.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from mlflow_triton.fleet.errors import (
    ReplicaUnreachable,
    describe_failures,
    is_unreachable,
    raise_failures,
)
from mlflow_triton.fleet.server import TritonCluster
from mlflow_triton.repository.concurrency import in_background
from mlflow_triton.repository.history import ServingHistory, Via
from mlflow_triton.repository.layout import CONFIG_FILE, staging_name, version_prefix, warmup_prefix
from mlflow_triton.repository.lease import Lease, LeaseLost
from mlflow_triton.repository.provenance import Provenance
from mlflow_triton.repository.store import ModelRepositoryStore
from mlflow_triton.rollout import interrupts
from mlflow_triton.rollout.audit import AuditTrail
from mlflow_triton.rollout.verification import Candidate, VerificationUnavailable, Verifier
from mlflow_triton.triton_config import model_config as mcfg

logger = logging.getLogger(__name__)


class VersionRefused(MlflowException):
    """A replica refused the candidate or it failed verification; nothing serves it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INTERNAL_ERROR)


@dataclass
class Rollout:
    """One deployment's rollouts, done by the holder of its lease.

    Attributes:
        store / cluster: the repository and its replicas.
        name: the deployment.
        lease: held for the whole rollout; checked before every write that changes serving.
        history: the deployment's serving history (recorded and saved here).
        target: where the replicas were found (a target URI), for the audit tags; default:
            the replica URLs.
        switched: the version :meth:`switch` switched in and recorded as serving, if any.
    """

    store: ModelRepositoryStore
    cluster: TritonCluster
    name: str
    lease: Lease
    history: ServingHistory
    target: str | None = None
    #: The version this rollout switched in and recorded as serving (None: none yet).
    switched: int | None = field(default=None, init=False)

    # -- staging -----------------------------------------------------------------------------
    def staging_left_over(self) -> bool:
        """A staging model is in the repository or loaded on a replica (a dead publisher's,
        or one whose unload failed): it must go before the next rollout.

        Loaded models come from one statistics call per replica
        (:meth:`~mlflow_triton.fleet.server.TritonCluster.ready_models`), not the repository
        index, which makes tritonserver poll every model folder of the repository (on S3, two
        requests per folder: a minute over 1,000 deployments at 20 ms per request). The
        folder is deleted only after the unload, so a model left loading has its folder."""
        staging = staging_name(self.name)
        folders, files = self.store.list_dir(f"{staging}/")
        if folders or files:
            return True
        return any(model == staging for loaded in self.cluster.ready_models().values() for model, _ in loaded)

    def clean_staging(self, urls: Sequence[str] | None = None) -> None:
        """Unload and delete the staging model (a leftover of a dead publisher, or ours)."""
        self.lease.check("cleaning the staging model")  # never another holder's staging
        staging = staging_name(self.name)
        try:
            self.cluster.unload_model(staging, ignore_missing=True, urls=urls)
        except MlflowException as err:  # the next rollout sees it in the index and retries
            logger.warning("Could not unload %s: %s", staging, err.message)
        self.store.delete_prefix(f"{staging}/")

    def verify(
        self, version: int, message: Any, provenance: Provenance, verify: Verifier | None,
        urls: Sequence[str] | None = None, model_file: Path | None = None,
        build_version: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        """Load ``version`` under the staging name on ``urls`` (default: all) and verify it.

        Args:
            build_version: given when the files were transferred into the staging folder (a
                new upload): builds ``NAME/<version>/`` from them. It runs beside the load and
                the verification, and the staging model is removed only once it is done;
                its failure fails the rollout (an unverified version is kept for a retry
                only when it is complete). Without it, the version folder is copied to the
                staging folder first.

        Raises:
            VersionRefused: a replica refused it or it failed verification (Triton's verdict).
            ReplicaUnreachable: a replica could not be reached; nothing is recorded.
            VerificationUnavailable: verification itself could not run (S3, local runtime);
                nothing is recorded.
        """
        urls = list(urls or self.cluster.urls)
        staging = staging_name(self.name)
        # No staging model is left here: every caller ran repair.remove_leftovers first.
        self.lease.check("staging the candidate")
        if build_version is None:
            self.store.copy_prefix(version_prefix(self.name, version), version_prefix(staging, version))
        self.store.copy_prefix(warmup_prefix(self.name, version), warmup_prefix(staging, version))
        staged = mcfg.pin_version(message, version)
        staged.name = staging
        self.store.write_bytes(f"{staging}/{CONFIG_FILE}", mcfg.to_pbtxt(staged).encode())
        building = in_background(build_version, thread_name=f"mlflow-triton-build-{self.name}") if build_version else None
        try:
            try:
                raise_failures(f"load {self.name!r} version {version}", self.cluster.load_model(staging, version, urls))
                if verify is not None:
                    verify(Candidate(self.name, staging, version, tuple(urls), provenance, model_file))
            except (ReplicaUnreachable, VerificationUnavailable):
                if building is not None:
                    building.result()  # kept for a retry only if complete: else its own error
                raise
            except LeaseLost:
                raise
            except MlflowException as err:
                raise VersionRefused(f"{self.name!r} version {version} failed verification: {err.message}") from err
            if building is not None:
                building.result()
        finally:
            with interrupts.critical(f"removing the staging model {staging}"):
                _settle(building, f"building {self.name!r} version {version}")  # it reads the staging folder
                try:
                    self.clean_staging(urls)
                except Exception as err:  # the next rollout removes it; the outcome stands
                    logger.warning("Could not remove the staging model %s: %s", staging, err)

    # -- switching ---------------------------------------------------------------------------
    def switch(
        self, version: int, message: Any, previous_config: bytes | None, previous_version: int | None,
        via: Via, verified: bool, **details: Any,
    ) -> None:  # fmt: skip
        """Pin ``version`` in config.pbtxt and load it everywhere; the history records it as
        ``staged`` before the config write and ``serving`` after. SIGINT and SIGTERM wait
        until it is done (:func:`~mlflow_triton.rollout.interrupts.critical`).

        Raises:
            LeaseLost: before writing anything, if this publisher lost its lease.
            ReplicaUnreachable: a replica is unreachable; the config pins ``version`` and the
                next ``update``/``sync`` finishes the rollout without uploading again.
            VersionRefused: a replica refused it; the previous config is back (the caller
                records the refusal, with what it knows of the version).
        """
        with interrupts.critical(f"the switch of {self.name!r} to version {version}"):
            self._switch(version, message, previous_config, previous_version, via, verified, **details)

    def _switch(
        self, version: int, message: Any, previous_config: bytes | None, previous_version: int | None,
        via: Via, verified: bool, **details: Any,
    ) -> None:  # fmt: skip
        self.lease.check("the config swap")
        self.history.record("staged", version, via, verified=verified)
        self.history.save(self.store)
        config_key = f"{self.name}/{CONFIG_FILE}"
        self.store.write_bytes(config_key, mcfg.to_pbtxt(mcfg.pin_version(message, version)).encode())
        errors = self.cluster.load_model(self.name, version)
        failed = {url: err for url, err in errors.items() if err is not None}
        if not failed:
            self.record_serving(version, via, verified, previous=previous_version, **details)
            self.switched = version
            return
        if all(is_unreachable(err) for err in failed.values()):
            raise ReplicaUnreachable(
                f"{self.name!r} version {version} is published in {self.store.uri} but Triton at "
                f"{', '.join(sorted(failed))} did not reload it (unreachable). Rerun the same "
                "`mlflow deployments update` (or `mlflow-triton sync`) when it is back: nothing "
                "will be uploaded again.",
                ", ".join(sorted(failed)),
            )
        # A replica refused it. Every replica that did not refuse (loaded it, or timed out and
        # may still be loading it) goes back to the previous version.
        self.lease.check("restoring the previous config")
        if previous_config is not None:
            self.store.write_bytes(config_key, previous_config)
        else:
            self.store.delete(config_key)
        reason = describe_failures(f"load {self.name!r} version {version}", failed)
        back = [url for url, err in errors.items() if err is None or is_unreachable(err)]
        if back and previous_version is not None:
            for url, err in self.cluster.load_model(self.name, previous_version, back).items():
                if err is not None:
                    logger.error("Could not reload %s version %s on %s: %s", self.name, previous_version, url, err)
        elif back:
            self.cluster.unload_model(self.name, urls=back)
        raise VersionRefused(f"{self.name!r} version {version} was refused at the switch: {reason}")

    def record_serving(self, version: int, via: Via, verified: bool | None, **details: Any) -> None:
        """Record that ``version`` serves (after a fencing check)."""
        self.lease.check("recording the serving version")
        replaced = self._last_serving()
        entry = self.history.record("serving", version, via, verified=verified, **details)
        self.history.save(self.store)
        self.audit_trail().serving(entry, replaced)

    def refuse(self, version: int, via: Via, reason: str, **details: Any) -> None:
        """Record a refused candidate (after a fencing check)."""
        self.lease.check("recording the refusal")
        entry = self.history.record("refused", version, via, reason=reason, **details)
        self.history.save(self.store)
        self.audit_trail().refused(entry, self._last_serving())

    def audit_trail(self) -> AuditTrail:
        """The MLflow tags of this deployment (best effort, see :mod:`mlflow_triton.rollout.audit`)."""
        target = self.target or f"triton:/{','.join(self.cluster.urls)}"
        return AuditTrail(self.name, target, self.store.uri)

    def _last_serving(self) -> dict[str, Any] | None:
        return next((e for e in reversed(self.history.events) if e.get("event") == "serving"), None)


def _settle(running: Future | None, what: str) -> None:
    """Wait for ``running`` to end; a failure that nobody raised is logged (the rollout failed
    for another reason, which is the one reported)."""
    if running is None:
        return
    try:
        running.result()
    except BaseException as err:
        logger.debug("%s ended with %s: %s", what, type(err).__name__, err)
