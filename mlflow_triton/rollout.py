"""Make one published version serve on every replica: verified first, or nothing changes.

Triton answers a request that names no version with the highest loaded version, so loading a
candidate beside the serving version would expose it at once. A rollout therefore never loads
an unverified version under the deployment's own name:

1. **stage**: the version's files are copied inside the repository (server-side on S3, hard
   links on a local disk) to a staging model, ``_mlflow-triton-staging.NAME/<version>/``, with
   the same config under that name. Names starting with ``_`` are never deployments
   (:func:`~mlflow_triton.config.validate_model_name`), so no client asks for it.
2. **verify**: every replica loads the staging model; it must become READY and pass the
   :data:`~mlflow_triton.verification.Verifier` (a smoke inference by default). A failure is
   recorded as ``refused`` in the serving history and the candidate is removed: clients never
   saw it. The staging model is unloaded and deleted in every case.
3. **switch**: after a fencing check of the lease, the history records the version as serving
   and ``config.pbtxt`` is rewritten to pin it; each replica reloads, which Triton does without
   failing in-flight requests (the old version serves until the new one is READY).

What the switch loads is the same bytes with the same config as what was verified, only under
the deployment's name. If a replica still refuses it there (it crashed, ran out of memory),
the previous config is restored and the replicas that had switched are reloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from mlflow_triton import model_config as mcfg
from mlflow_triton.history import ServingHistory, Via
from mlflow_triton.lease import Lease
from mlflow_triton.server import ModelNotFound, ReplicaUnreachable, TritonCluster, is_unreachable
from mlflow_triton.store import ModelRepositoryStore
from mlflow_triton.verification import Candidate, Verifier

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
STAGING_PREFIX = "_mlflow-triton-staging."


def staging_name(name: str) -> str:
    """The Triton model name a candidate of ``name`` is verified under."""
    return f"{STAGING_PREFIX}{name}"


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
    """

    store: ModelRepositoryStore
    cluster: TritonCluster
    name: str
    lease: Lease
    history: ServingHistory

    # -- staging -----------------------------------------------------------------------------
    def clean_staging(self, urls: Sequence[str] | None = None) -> None:
        """Unload and delete the staging model (a leftover of a dead publisher, or ours)."""
        self.lease.check("cleaning the staging model")  # never another holder's staging
        staging = staging_name(self.name)
        errors = self.cluster._each(lambda server: server.unload_model(staging), urls)
        for url, err in errors.items():
            if err is not None and not isinstance(err, (ReplicaUnreachable, ModelNotFound)):
                logger.warning("Could not unload %s on %s: %s", staging, url, err)
        self.store.delete_prefix(f"{staging}/")

    def verify(
        self, version: int, message: Any, provenance: Mapping[str, Any], verify: Verifier | None,
        urls: Sequence[str] | None = None, model_file: Path | None = None,
    ) -> None:  # fmt: skip
        """Load ``version`` under the staging name on ``urls`` (default: all) and verify it.

        Raises:
            VersionRefused: a replica refused it or verification failed.
            ReplicaUnreachable: a replica could not be reached (nothing is recorded).
        """
        urls = list(urls or self.cluster.urls)
        staging = staging_name(self.name)
        self.clean_staging(urls)
        self.store.copy_prefix(f"{self.name}/{version}/", f"{staging}/{version}/")
        staged = mcfg.pin_version(message, version)
        staged.name = staging
        self.store.write_bytes(f"{staging}/{CONFIG_FILE}", mcfg.to_pbtxt(staged).encode())
        try:
            failed = _failures(self.cluster.load_model(staging, version, urls))
            if failed:
                _raise_failed(f"{self.name!r} version {version} did not load", failed)
            if verify is not None:
                candidate = Candidate(self.name, staging, version, tuple(urls), provenance, model_file)
                try:
                    verify(candidate)
                except MlflowException as err:
                    if is_unreachable(err):
                        raise ReplicaUnreachable(err.message, ", ".join(urls)) from err
                    raise VersionRefused(f"{self.name!r} version {version} failed verification: {err.message}") from err
                except Exception as err:
                    raise VersionRefused(f"{self.name!r} version {version} failed verification: {err}") from err
        finally:
            try:
                self.clean_staging(urls)
            except Exception as err:  # the next rollout removes it; the outcome stands
                logger.warning("Could not remove the staging model %s: %s", staging, err)

    # -- switching ---------------------------------------------------------------------------
    def switch(
        self, version: int, message: Any, previous_config: bytes | None, previous_version: int | None,
        via: Via, verified: bool, **details: Any,
    ) -> None:  # fmt: skip
        """Record ``version`` as serving, pin it in config.pbtxt and load it everywhere.

        Raises:
            LeaseLost: before writing anything, if this publisher lost its lease.
            ReplicaUnreachable: a replica is unreachable; the config pins ``version`` and the
                next ``update``/``sync`` finishes the rollout without uploading again.
            VersionRefused: a replica refused it; the previous config is back.
        """
        self.lease.check("the config swap")
        self.history.record("serving", version, via, verified=verified, previous=previous_version, **details)
        self.history.save(self.store)
        config_key = f"{self.name}/{CONFIG_FILE}"
        self.store.write_bytes(config_key, mcfg.to_pbtxt(mcfg.pin_version(message, version)).encode())
        errors = self.cluster.load_model(self.name, version)
        failed = _failures(errors)
        if not failed:
            return
        if all(is_unreachable(err) for err in failed.values()):
            raise ReplicaUnreachable(
                f"{self.name!r} version {version} is published in {self.store.uri} but Triton at "
                f"{', '.join(sorted(failed))} did not reload it (unreachable). Rerun the same "
                "`mlflow deployments update` (or `mlflow-triton sync`) when it is back: nothing "
                "will be uploaded again.",
                ", ".join(sorted(failed)),
            )
        switched = [url for url, err in errors.items() if err is None]
        self.lease.check("restoring the previous config")
        if previous_config is not None:
            self.store.write_bytes(config_key, previous_config)
        else:
            self.store.delete(config_key)
        reason = _describe_failures(failed)
        self.history.record("refused", version, via, reason=reason)
        self.history.save(self.store)
        if switched and previous_version is not None:
            for url, err in _failures(self.cluster.load_model(self.name, previous_version, switched)).items():
                logger.error("Could not reload %s version %s on %s: %s", self.name, previous_version, url, err)
        elif switched:
            self.cluster.unload_model(self.name)
        raise VersionRefused(f"{self.name!r} version {version} was refused at the switch: {reason}")

    def refuse(self, version: int, via: Via, reason: str) -> None:
        """Record a refused candidate (after a fencing check)."""
        self.lease.check("recording the refusal")
        self.history.record("refused", version, via, reason=reason)
        self.history.save(self.store)


def _failures(errors: Mapping[str, Exception | None]) -> dict[str, Exception]:
    return {url: err for url, err in errors.items() if err is not None}


def _describe_failures(failed: Mapping[str, Exception]) -> str:
    return "; ".join(
        f"{url}: {err.message if isinstance(err, MlflowException) else err}" for url, err in failed.items()
    )


def _raise_failed(what: str, failed: Mapping[str, Exception]) -> None:
    details = _describe_failures(failed)
    if all(is_unreachable(err) for err in failed.values()):
        raise ReplicaUnreachable(f"{what}: Triton unreachable ({details}). Nothing changed; retry.", ", ".join(failed))
    raise VersionRefused(f"{what}: {details}")
