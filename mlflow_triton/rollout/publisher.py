"""Publishing a model version into a Triton repository, as one transaction.

A publish never overwrites a served version. Under the deployment's lease
(:mod:`mlflow_triton.repository.lease`) it first repairs what an interrupted publisher left
(:mod:`mlflow_triton.rollout.repair`), claims ``N = last + 1`` with a conditional create, uploads (or
copies server-side) the files and writes their provenance last, so a folder without one is an
interrupted upload. Then it hands ``N`` to a :class:`~mlflow_triton.rollout.switch.Rollout`: loaded
and verified under a staging name, then switched in. A refused version is deleted and recorded
as refused; the repository and the serving version are left as they were. The layout is in
:mod:`mlflow_triton.repository.state`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    ABORTED,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from mlflow_triton.triton_config import model_config as mcfg
from mlflow_triton.rollout import repair
from mlflow_triton.settings.deployment import DeploymentConfig, validate_model_name
from mlflow_triton.repository.history import ServingHistory
from mlflow_triton.repository.state import (
    CONFIG_FILE,
    PROVENANCE_FILE,
    DeploymentState,
    list_deployments,
    read_provenance,
    read_state,
)
from mlflow_triton.repository.lease import Lease, LeaseLost
from mlflow_triton.flavors.model_source import ModelSource
from mlflow_triton.rollout.switch import Rollout, VersionRefused
from mlflow_triton.fleet.server import ReplicaUnreachable, TritonCluster
from mlflow_triton.repository.store import ModelRepositoryStore, open_store
from mlflow_triton.repository.transfer import Located, locate, read_io, transfer
from mlflow_triton.rollout.verification import VerificationUnavailable, Verifier
from mlflow_triton.triton_config.warmup import (
    WARMUP_FOLDER, WarmupPlan, plan_warmup, warmup_count, warmup_enabled, warmup_example,
)  # fmt: skip

logger = logging.getLogger(__name__)

PROVENANCE_SCHEMA = 1
#: Created with a conditional write in a version folder before its first byte: the claim.
CLAIM_FILE = ".mlflow-triton.claim"


class ServingChanged(MlflowException):
    """Another publisher changed the serving version while we waited: compare again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=ABORTED)


@dataclass
class PublishResult:
    name: str
    version: int
    previous_version: int | None
    changed: bool
    bytes_uploaded: int = 0
    bytes_copied: int = 0
    flavor: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    pruned: list[int] = field(default_factory=list)
    verified: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RepairResult:
    """What :meth:`ModelPublisher.repair` did: replicas reloaded, version folders removed."""

    reloaded: list[str] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)


class ModelPublisher:
    """Publishes, repairs and deletes model versions in one repository for one cluster.

    Args:
        store / cluster / config: the repository, its replicas and the deployment config
            (``config.lease_ttl`` and ``config.lease_wait`` shape the lease).
        target: where the replicas were found (a target URI), named by the audit tags.
    """

    def __init__(
        self, store: ModelRepositoryStore, cluster: TritonCluster, config: DeploymentConfig,
        target: str | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.cluster = cluster
        self.config = config
        self.target = target

    @classmethod
    def for_config(
        cls, config: DeploymentConfig, triton_urls: Sequence[str], stores: dict[Any, Any] | None = None,
        target: str | None = None,
    ) -> "ModelPublisher":
        """The publisher of ``config``'s repository for the replicas ``triton_urls``.

        ``stores`` shares one store (one boto3 client, thread-safe) between the deployments of
        one reconciliation that use the same repository. ``target`` (the target URI the
        replicas were found from) is what the audit tags say the model serves on.
        """
        key = (config.require_repository(), config.s3_endpoint_url)
        store = stores.get(key) if stores is not None else None
        if store is None:
            store = open_store(*key)
            if stores is not None:
                stores[key] = store
        cluster = TritonCluster(list(triton_urls), config.protocol, timeout_s=config.wait_ready_timeout)
        return cls(store, cluster, config, target)

    # -- reading -----------------------------------------------------------------------------
    def read_state(self, name: str) -> DeploymentState:
        return read_state(self.store, name)

    def read_provenance(self, name: str, version: int) -> dict[str, Any] | None:
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
        with Lease(self.store, name, ttl_s=self.config.lease_ttl, wait_s=wait) as held:
            yield held

    def rollout_for(self, name: str, lease: Lease) -> Rollout:
        """The rollout of ``name`` by the holder of ``lease``, with the deployment's history."""
        return Rollout(self.store, self.cluster, name, lease, self.read_history(name), target=self.target)

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
        self, name: str, source: ModelSource, mode: str = "any", verify: Verifier | None = None,
        lease_wait_s: float | None = None,
    ) -> PublishResult:  # fmt: skip
        """Publish ``source`` as the serving version of ``name``, verified on every replica.

        Args:
            mode: ``create`` (fail if it exists), ``update`` (fail if missing) or ``any``.
            verify: called with the candidate loaded under its staging name on every replica
                (:class:`~mlflow_triton.rollout.verification.SmokeTest`); raising refuses it. Without
                it the candidate must still load everywhere before it serves.
            lease_wait_s: how long to wait for another publisher (default: config).

        Raises:
            MlflowException: RESOURCE_ALREADY_EXISTS / RESOURCE_DOES_NOT_EXIST for the mode,
                or when another publisher kept the lease; INTERNAL_ERROR when the version was
                refused (nothing changed); TEMPORARILY_UNAVAILABLE when a replica is down.
        """
        validate_model_name(name)
        self.store.check()
        self.check_servers()
        with self.lease(name, lease_wait_s) as lease:
            state = self.read_state(name)
            if mode == "create" and state.exists:
                raise MlflowException(
                    f"Deployment {name!r} already exists in {self.store.uri}; use "
                    "`mlflow deployments update` to publish a new version.",
                    error_code=RESOURCE_ALREADY_EXISTS,
                )
            if mode == "update" and not state.exists:
                raise MlflowException(
                    f"Deployment {name!r} does not exist in {self.store.uri}; create it first.",
                    error_code=RESOURCE_DOES_NOT_EXIST,
                )
            rollout = self.rollout_for(name, lease)
            repair.remove_leftovers(self, state, rollout)
            with tempfile.TemporaryDirectory(prefix="mlflow-triton-") as tmp:
                return self._publish_locked(state, source, Path(tmp), verify, rollout)

    def _publish_locked(
        self, state: DeploymentState, source: ModelSource, tmp: Path, verify: Verifier | None,
        rollout: Rollout,
    ) -> PublishResult:  # fmt: skip
        name = state.name
        serving = state.provenance or {}
        started = time.monotonic()
        settings = self.config.settings(source.flavor)
        # 1. The very artifact that serves, with the same settings: nothing to read or write.
        if serving.get("source_uri") == source.artifact_uri and serving.get("settings") == settings:
            return self._unchanged(state, source, rollout, verify)
        located = locate(self.store, source, tmp, self.config)
        if located.entries is not None and self._serves(serving, located.entries, settings):
            return self._unchanged(state, source, rollout, verify)

        prepare = getattr(verify, "prepare", None)
        if prepare is not None:  # the model changed: read what verification needs, before any write
            prepare()
        example = None  # the warmup's input example, read once
        if located.io is not None:  # refuse a bad config before any claim (a stream: after it)
            example = self._generate(name, source, located, 0)[2]
        pending = self._pending_upload(state, rollout, located, source, settings)
        version = pending or self._claim_version(
            name, max(state.versions + [state.serving_version or 0, rollout.history.highest_version()]) + 1
        )
        prefix = f"{name}/{version}/"
        uploaded = copied = 0
        switching = False
        try:
            if pending:
                logger.info("%s version %d is already uploaded (an earlier try): nothing to upload", name, version)
                if located.entries is None:
                    located.entries = self._provenance_entries(name, version)
                    located.io = read_io(self.store, source, f"{prefix}{located.files[0][1]}")
            else:
                spool = tmp / "reference" if getattr(verify, "needs_model_file", False) else None
                uploaded, copied = transfer(self.store, located, source, prefix, spool)
            assert located.entries is not None and located.io is not None
            if located.streamed and not pending and self._serves(serving, located.entries, settings):
                # Same bytes under another URI: found out while streaming, so the copy goes.
                self._discard(name, version)
                return self._unchanged(state, source, rollout, verify)
            message, warmup, _ = self._generate(name, source, located, version, example)
            for filename, data in (warmup.files if warmup else {}).items():
                self.store.write_bytes(f"{name}/{WARMUP_FOLDER}/{filename}", data)
            provenance = self._provenance(name, version, source, located, message, settings)
            # Written last, and only by the lease holder: a version folder without provenance
            # is an interrupted upload, which the next publisher removes.
            rollout.lease.check("writing the provenance")
            self.store.write_bytes(prefix + PROVENANCE_FILE, json.dumps(provenance, indent=2).encode())
            model_file = None if pending else located.complete_local_copy
            rollout.verify(version, message, provenance, verify, model_file=model_file)
            switching = True
            rollout.switch(
                version, message, state.config_bytes, state.serving_version, "publish",
                verified=verify is not None, registered_model=source.registered_model,
                registered_version=source.registered_version, model_uri=source.model_uri,
            )  # fmt: skip
        except VersionRefused as err:
            rollout.lease.check("removing the refused version")  # a lost lease deletes nothing
            repair.delete_version(self.store, name, version)
            rollout.refuse(
                version, "publish", err.message, registered_model=source.registered_model,
                registered_version=source.registered_version, settings=settings,
            )  # fmt: skip
            restored = f"version {state.serving_version}" if state.serving_version else "no version"
            raise MlflowException(
                f"{name!r} version {version} was rejected, so it was not published and the "
                f"repository still serves {restored}. {err.message}",
                error_code=err.error_code,
            ) from err
        except (ReplicaUnreachable, VerificationUnavailable) as err:
            if switching:
                raise  # the config pins the verified version: the next update reloads it
            # Complete and unverified: kept (never served, so the next publish either reuses
            # it without uploading or prunes it), but nothing changed for clients.
            raise type(err)(
                f"{name!r} version {version} is uploaded to {self.store.url(prefix)} but could not "
                f"be verified: {err.message} Clients still get "
                f"{f'version {state.serving_version}' if state.serving_version else 'no version'}. "
                "Rerun the same `mlflow deployments update` (or `mlflow-triton sync`) when Triton "
                "is back: nothing will be uploaded again.",
                *([err.url] if isinstance(err, ReplicaUnreachable) else []),
            ) from err
        except LeaseLost:
            raise  # the new holder repairs; deleting now could hit its work
        except BaseException:
            # Only while nobody can have taken the lease over (judged locally: the store may be
            # what failed), and never a version the config pins (the next update finishes it).
            if rollout.lease.held_locally() and not (switching and _config_pins(self.store, name, version)):
                self._discard(name, version)
            raise
        pruned = repair.prune(self, name, serving=version, rollout=rollout)
        logger.info("Published %s version %d in %.1fs", name, version, time.monotonic() - started)
        return PublishResult(
            name, version, state.serving_version, True, bytes_uploaded=uploaded,
            bytes_copied=copied, flavor=source.flavor, provenance=provenance, pruned=pruned,
            verified=verify is not None,
        )  # fmt: skip

    @staticmethod
    def _serves(serving: dict[str, Any], entries: list[dict[str, Any]], settings: dict[str, Any]) -> bool:
        """Whether the serving version holds exactly these files with these settings."""
        return (
            serving.get("artifact") == entries[0]
            and serving.get("external_data", []) == entries[1:]
            and serving.get("settings") == settings
        )

    def _provenance(
        self, name: str, version: int, source: ModelSource, located: Located, message: Any,
        settings: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        assert located.entries is not None and located.io is not None
        return {
            "schema": PROVENANCE_SCHEMA,
            "name": name,
            "version": version,
            "flavor": source.flavor,
            "backend": message.backend,
            **source.provenance(),
            "artifact": located.entries[0],
            "external_data": located.entries[1:],
            "tensors": {
                "inputs": [mcfg.provenance_entry(t) for t in located.io.inputs],
                "outputs": [mcfg.provenance_entry(t) for t in located.io.outputs],
            },
            "settings": settings,
            "config_pbtxt": mcfg.to_pbtxt(message),
            "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def _provenance_entries(self, name: str, version: int) -> list[dict[str, Any]]:
        provenance = self.read_provenance(name, version) or {}
        return [provenance["artifact"]] + list(provenance.get("external_data", []))

    def _generate(
        self, name: str, source: ModelSource, located: Located, version: int, example: Any = None
    ) -> tuple[Any, WarmupPlan | None, Any]:
        """The config.pbtxt message of ``version``, its warmup files (:mod:`mlflow_triton.triton_config.warmup`)
        and the input example they were made from (pass it back to skip reading it again); a
        directory flavor builds its own config (without generated warmup)."""
        if located.build_config is not None:
            return located.build_config(name, version), None, None
        assert located.io is not None
        if example is None:
            example = warmup_example(source, located.io, self.config.warmup, self.config.instance_kind)
        enabled = warmup_enabled(self.config.warmup, self.config.instance_kind)
        count = warmup_count(source.flavor)
        warmup = plan_warmup(located.io, self.config.max_batch_size, example, version, count) if enabled else None
        return mcfg.build_model_config(name, source.flavor, located.io, self.config, version, warmup), warmup, example

    def _claim_version(self, name: str, first: int) -> int:
        """Reserve the next free version number with a conditional create of a marker in its
        folder, before any byte is uploaded: a publisher that lost its lease mid-upload and a
        publisher that took the lease over can never pick the same number."""
        version = first
        while self.store.create_exclusive(f"{name}/{version}/{CLAIM_FILE}", b"") is None:
            version += 1
        return version

    def _pending_upload(
        self, state: DeploymentState, rollout: Rollout, located: Located, source: ModelSource,
        settings: dict[str, Any],
    ) -> int | None:  # fmt: skip
        """A complete version folder that never served and holds these very files with these
        settings (an earlier try that could not reach a replica): reused, not uploaded again.
        A stream is known by its source URI (MLflow artifacts are immutable), the others by
        their content."""
        for version in repair.never_served(state, rollout.history):
            provenance = self.read_provenance(state.name, version) or {}
            if provenance.get("settings") != settings or not provenance.get("artifact"):
                continue
            entries = [provenance["artifact"]] + list(provenance.get("external_data", []))
            same = (
                provenance.get("source_uri") == source.artifact_uri
                if located.entries is None
                else entries == located.entries
            )
            if same and {e["file"] for e in entries} <= set(self.store.list_dir(f"{state.name}/{version}/")[1]):
                return version
        return None

    def _unchanged(
        self, state: DeploymentState, source: ModelSource, rollout: Rollout, verify: Verifier | None
    ) -> PublishResult:
        """Same bytes, same settings: record the registry coordinates and make sure it serves."""
        name, version = state.name, state.serving_version
        assert version is not None and state.provenance is not None
        provenance = dict(state.provenance)
        if any(provenance.get(k) != v for k, v in source.provenance().items()):
            provenance.update(source.provenance())
            rollout.lease.check("updating the provenance")
            self.store.write_bytes(f"{name}/{version}/{PROVENANCE_FILE}", json.dumps(provenance, indent=2).encode())
        repair.reload_missing(self, state, rollout, verify)
        pruned = repair.prune(self, name, serving=version, rollout=rollout)
        logger.info("%s version %d already serves this model: nothing uploaded", name, version)
        return PublishResult(name, version, version, False, flavor=source.flavor, provenance=provenance, pruned=pruned)

    def _discard(self, name: str, version: int) -> None:
        try:
            repair.delete_version(self.store, name, version)
        except Exception as err:  # the original error matters more; the version is not served
            logger.warning("Could not remove the partial upload %s: %s", self.store.url(f"{name}/{version}/"), err)

    # -- repair, rollback, delete ----------------------------------------------------------------
    def repair(
        self, name: str, version: int, verify: Verifier | None = None, lease_wait_s: float | None = None
    ) -> RepairResult:
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
            result.reloaded = repair.reload_missing(self, state, rollout, verify)
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


def _config_pins(store: ModelRepositoryStore, name: str, version: int) -> bool:
    try:
        raw = store.read_bytes(f"{name}/{CONFIG_FILE}")
    except Exception:
        return True  # unknown: keep the upload; the next publisher's repair decides
    return raw is not None and version in mcfg.serving_versions(mcfg.parse_pbtxt(raw))
