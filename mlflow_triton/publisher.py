"""Publishing a model version into a Triton repository, as one transaction.

Layout written for model ``NAME`` (Triton's repository layout plus three files of ours)::

    <repo>/NAME/config.pbtxt                 version_policy pins the serving version
    <repo>/NAME/<N>/model.onnx | model.pt
    <repo>/NAME/<N>/mlflow-triton.json       provenance: MLflow URI, registry version, hashes
    <repo>/NAME/mlflow-triton-history.json   which version served when (mlflow_triton.history)
    <repo>/NAME/.mlflow-triton.lease         held while a publisher writes (mlflow_triton.lease)

A publish never overwrites a served version. Under the deployment's lease it uploads
``N = last + 1`` (the provenance file last, so a folder without one is an interrupted upload),
then hands ``N`` to a :class:`~mlflow_triton.rollout.Rollout`: loaded and verified under a
staging name, then switched in. A refused version is deleted and recorded as refused; the
repository and the serving version are left as they were.

Crashes: a publisher killed at any point leaves its lease, which expires after its TTL. The
next publisher (or ``sync``) takes it over and first repairs what the dead one left: the
staging model, version folders that never served or lack their provenance, replicas that did
not load the pinned version (they are loaded and verified now), versions beyond
``keep_versions``.
"""

from __future__ import annotations

import hashlib
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

from mlflow_triton import model_config as mcfg
from mlflow_triton.config import DeploymentConfig, validate_model_name
from mlflow_triton.history import ServingHistory
from mlflow_triton.lease import LEASE_FILE, Lease, LeaseLost
from mlflow_triton.model_source import ModelSource, check_torchscript
from mlflow_triton.rollout import CONFIG_FILE, Rollout, VersionRefused, staging_name
from mlflow_triton.server import ReplicaUnreachable, TritonCluster, raise_failures
from mlflow_triton.store import ModelRepositoryStore, open_store, progress_bar
from mlflow_triton.verification import Verifier

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "mlflow-triton.json"
PROVENANCE_SCHEMA = 1


class ServingChanged(MlflowException):
    """Another publisher changed the serving version while we waited: compare again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=ABORTED)


@dataclass
class DeploymentState:
    """What the repository says about one model (one config read and one listing)."""

    name: str
    config: Any  # model_config_pb2.ModelConfig | None
    config_bytes: bytes | None
    versions: list[int]
    serving_version: int | None
    provenance: dict[str, Any] | None
    #: A lease object is present: a publisher is at work, or died and left work to repair.
    leased: bool = False

    @property
    def exists(self) -> bool:
        return self.config_bytes is not None


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


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ModelPublisher:
    """Publishes, activates and deletes model versions in one repository for one cluster.

    Args:
        store / cluster / config: the repository, its replicas and the deployment config
            (``config.lease_ttl`` and ``config.lease_wait`` shape the lease).
    """

    def __init__(self, store: ModelRepositoryStore, cluster: TritonCluster, config: DeploymentConfig) -> None:
        self.store = store
        self.cluster = cluster
        self.config = config

    @classmethod
    def for_config(
        cls, config: DeploymentConfig, triton_urls: Sequence[str], stores: dict[Any, Any] | None = None
    ) -> "ModelPublisher":
        """The publisher of ``config``'s repository for the replicas ``triton_urls``.

        ``stores`` shares one store (one boto3 client, thread-safe) between the deployments of
        one reconciliation that use the same repository.
        """
        key = (config.require_repository(), config.s3_endpoint_url)
        store = stores.get(key) if stores is not None else None
        if store is None:
            store = open_store(*key)
            if stores is not None:
                stores[key] = store
        cluster = TritonCluster(list(triton_urls), config.protocol, timeout_s=config.wait_ready_timeout)
        return cls(store, cluster, config)

    # -- reading -----------------------------------------------------------------------------
    def read_state(self, name: str) -> DeploymentState:
        validate_model_name(name)
        config_bytes = self.store.read_bytes(f"{name}/{CONFIG_FILE}")
        folders, files = self.store.list_dir(f"{name}/")
        versions = sorted(int(f) for f in folders if f.isdigit())
        config = mcfg.parse_pbtxt(config_bytes) if config_bytes is not None else None
        serving = mcfg.serving_versions(config) if config is not None else []
        serving_version = serving[-1] if serving else (versions[-1] if versions and config else None)
        provenance = self.read_provenance(name, serving_version) if serving_version else None
        return DeploymentState(
            name, config, config_bytes, versions, serving_version, provenance, LEASE_FILE in files
        )

    def read_provenance(self, name: str, version: int) -> dict[str, Any] | None:
        raw = self.store.read_bytes(f"{name}/{version}/{PROVENANCE_FILE}")
        return json.loads(raw) if raw else None

    def read_history(self, name: str) -> ServingHistory:
        return ServingHistory.load(self.store, name)

    def deployments(self) -> list[DeploymentState]:
        """The state of every model folder in the repository that has a config.pbtxt."""
        folders, _ = self.store.list_dir("")
        states = (self.read_state(f) for f in folders if _is_model_name(f))
        return [state for state in states if state.exists]

    # -- the lease ---------------------------------------------------------------------------
    @contextmanager
    def lease(self, name: str, wait_s: float | None = None) -> Iterator[Lease]:
        """Hold the deployment's lease (see :mod:`mlflow_triton.lease`) for the block.

        Args:
            wait_s: how long to wait for a live holder (default: ``config.lease_wait``).
        """
        wait = self.config.lease_wait if wait_s is None else wait_s
        with Lease(self.store, name, ttl_s=self.config.lease_ttl, wait_s=wait) as held:
            yield held

    def _rollout(self, name: str, lease: Lease) -> Rollout:
        return Rollout(self.store, self.cluster, name, lease, self.read_history(name))

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
                (:class:`~mlflow_triton.verification.SmokeTest`); raising refuses it. Without
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
            rollout = self._rollout(name, lease)
            self._remove_leftovers(state, rollout)
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

        # 2. Server-side copy when the MLflow artifacts sit on the repository's S3 endpoint;
        #    else 3. download once, hash, upload. The tensors come from the same place on both
        #    paths (the ONNX graph, read without its weights; the signature for TorchScript),
        #    so both generate the same config.pbtxt. ONNX weights may live in external-data
        #    files beside model.onnx (MLflow's default): they are published with it.
        filename = mcfg.MODEL_FILENAMES[source.flavor]
        local: Path | None = None
        external: list[str] = []
        if source.companion_files():
            local = source.download(tmp)
            external = self._external_data(source, local)
        files = [(source.artifact_uri, filename)] + [(source.sibling_uri(n), n) for n in external]
        remote = [self.store.stat_uri(uri) for uri, _ in files]
        copy = all(remote)
        if copy:
            entries = [{"file": target, **stat} for (_, target), stat in zip(files, remote)]
            io = self._model_io(source, local)
        else:
            local = local or source.download(tmp)
            io = self._model_io(source, local)
            paths = [local] + [source.download(local.parent, n) for n in external]
            entries = [
                {"file": target, "sha256": sha256_file(path), "size": path.stat().st_size}
                for (_, target), path in zip(files, paths)
            ]
        artifact, external_entries = entries[0], entries[1:]
        if (
            serving.get("artifact") == artifact
            and serving.get("external_data", []) == external_entries
            and serving.get("settings") == settings
        ):
            return self._unchanged(state, source, rollout, verify)

        pending = self._pending_upload(state, rollout, artifact, external_entries, settings)
        version = pending or max(state.versions + [state.serving_version or 0, rollout.history.highest_version()]) + 1
        message = mcfg.build_model_config(name, source.flavor, io, self.config, version)
        provenance = {
            "schema": PROVENANCE_SCHEMA,
            "name": name,
            "version": version,
            "flavor": source.flavor,
            "backend": message.backend,
            **source.provenance(),
            "artifact": artifact,
            "external_data": external_entries,
            "tensors": {
                "inputs": [_tensor_entry(t) for t in io.inputs],
                "outputs": [_tensor_entry(t) for t in io.outputs],
            },
            "settings": settings,
            "config_pbtxt": mcfg.to_pbtxt(message),
            "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        prefix = f"{name}/{version}/"
        uploaded = copied = 0
        switching = False
        try:
            if pending:
                logger.info("%s version %d is already uploaded (an earlier try): nothing to upload", name, version)
            for (uri, target), entry in zip(files, entries) if not pending else ():
                if copy:
                    copied += self.store.copy_from(uri, prefix + target) or 0
                else:
                    path = local if target == filename else local.parent / target
                    uploaded += self.store.upload_file(
                        path, prefix + target, progress_bar(entry["size"], f"upload {name}/{version}/{target}")
                    )
            # Written last: a version folder without provenance is an interrupted upload.
            self.store.write_bytes(prefix + PROVENANCE_FILE, json.dumps(provenance, indent=2).encode())
            if not pending:
                logger.info(
                    "%s %s version %d (%d bytes) to %s", "Copied" if copied else "Uploaded", name,
                    version, copied or uploaded, self.store.url(prefix),
                )  # fmt: skip
            # A local copy serves verification only if it is complete (the copy path may
            # have downloaded model.onnx alone, to read its external-data references).
            rollout.verify(version, message, provenance, verify, model_file=local if local and not copy and not pending else None)
            switching = True
            rollout.switch(
                version, message, state.config_bytes, state.serving_version, "publish",
                verified=verify is not None, registered_model=source.registered_model,
                registered_version=source.registered_version, model_uri=source.model_uri,
            )  # fmt: skip
        except VersionRefused as err:
            rollout.lease.check("removing the refused version")  # a lost lease deletes nothing
            self._discard(prefix)
            if not any(e["event"] == "refused" and e["version"] == version for e in rollout.history.events):
                rollout.refuse(version, "publish", err.message)
            restored = f"version {state.serving_version}" if state.serving_version else "no version"
            raise MlflowException(
                f"{name!r} version {version} was rejected, so it was not published and the "
                f"repository still serves {restored}. {err.message}",
                error_code=err.error_code,
            ) from err
        except ReplicaUnreachable as err:
            if switching:
                raise  # the config pins the verified version: the next update reloads it
            # Complete and unverified: kept (never served, so the next publish either reuses
            # it without uploading or prunes it), but nothing changed for clients.
            raise ReplicaUnreachable(
                f"{name!r} version {version} is uploaded to {self.store.url(prefix)} but could not "
                f"be verified: {err.message} Clients still get "
                f"{f'version {state.serving_version}' if state.serving_version else 'no version'}. "
                "Rerun the same `mlflow deployments update` (or `mlflow-triton sync`) when Triton "
                "is back: nothing will be uploaded again.",
                err.url,
            ) from err
        except LeaseLost:
            raise  # the new holder repairs; deleting now could hit its upload
        except BaseException:
            if not (switching and _config_pins(self.store, name, version)):
                self._discard(prefix)
            raise
        pruned = self.prune(name, keep=self.config.keep_versions, serving=version, rollout=rollout)
        logger.info("Published %s version %d in %.1fs", name, version, time.monotonic() - started)
        return PublishResult(
            name, version, state.serving_version, True, bytes_uploaded=uploaded,
            bytes_copied=copied, flavor=source.flavor, provenance=provenance, pruned=pruned,
            verified=verify is not None,
        )  # fmt: skip

    def _pending_upload(
        self, state: DeploymentState, rollout: Rollout, artifact: dict[str, Any],
        external: list[dict[str, Any]], settings: dict[str, Any],
    ) -> int | None:  # fmt: skip
        """A complete version folder that never served and holds these very files with these
        settings (an earlier try that could not reach a replica): reused, not uploaded again."""
        served = rollout.history.served() | rollout.history.refused()
        for version in sorted(state.versions, reverse=True):
            if version == state.serving_version or version in served:
                continue
            if version < (state.serving_version or 0):
                break
            provenance = self.read_provenance(state.name, version) or {}
            if (
                provenance.get("artifact") == artifact
                and provenance.get("external_data", []) == external
                and provenance.get("settings") == settings
            ):
                return version
        return None

    @staticmethod
    def _external_data(source: ModelSource, local: Path) -> list[str]:
        """External-data files ``local`` (an ONNX model) needs; all must be in the MLflow model."""
        if source.flavor != "onnx":
            return []
        needed = mcfg.onnx_external_data(local)
        missing = sorted(set(needed) - set(source.companion_files()))
        if missing:
            raise MlflowException.invalid_parameter_value(
                f"{source.model_uri}: {source.artifact_path} references external data {missing} "
                "that is not in the MLflow model. Log the model with its .data files (mlflow.onnx "
                "writes them next to model.onnx) or with save_as_external_data=False."
            )
        return needed

    def _model_io(self, source: ModelSource, local: Path | None) -> mcfg.ModelIO:
        """Tensors: the ONNX graph (local file, or ranged reads of the remote one), or the
        signature for TorchScript, whose archive declares no tensor types."""
        if source.flavor != "onnx":
            if local is None:
                with self.store.open_uri(source.artifact_uri) as reader:
                    check_torchscript(reader, source.model_uri)
            return mcfg.io_from_signature(source.signature, source.flavor)
        if local is not None:
            io = mcfg.io_from_onnx(local)
        else:
            with self.store.open_uri(source.artifact_uri) as reader:
                io = mcfg.io_from_onnx(reader)
        return _with_signature_names(io, source.signature)

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
        self._reload_missing(state, rollout, verify)
        pruned = self.prune(name, keep=self.config.keep_versions, serving=version, rollout=rollout)
        logger.info("%s version %d already serves this model: nothing uploaded", name, version)
        return PublishResult(name, version, version, False, flavor=source.flavor, provenance=provenance, pruned=pruned)

    # -- repair --------------------------------------------------------------------------------
    def repair(self, name: str, version: int, verify: Verifier | None = None) -> RepairResult:
        """Make ``version`` (which the repository pins) serve verified on every replica, and
        remove what a dead publisher left (staging model, partial versions, extra versions).

        Raises:
            ServingChanged: another publisher pinned another version meanwhile.
        """
        with self.lease(name) as lease:
            state = self.read_state(name)
            if state.serving_version != version:
                raise ServingChanged(f"{name!r} was republished while reconciling")
            rollout = self._rollout(name, lease)
            result = RepairResult(removed=self._remove_leftovers(state, rollout))
            result.reloaded = self._reload_missing(state, rollout, verify)
            result.removed += self.prune(name, keep=self.config.keep_versions, serving=version, rollout=rollout)
            return result

    def _reload_missing(self, state: DeploymentState, rollout: Rollout, verify: Verifier | None) -> list[str]:
        """Replicas that lost the serving version (a restart in explicit mode) load it again,
        verified under the staging name first."""
        version = state.serving_version
        assert version is not None
        missing = self.cluster.not_ready(state.name, version)
        if not missing:
            return []
        rollout.verify(version, state.config, state.provenance or {}, verify, urls=missing)
        raise_failures(f"load {state.name!r} version {version}", self.cluster.load_model(state.name, version, missing))
        logger.info("Reloaded %s version %d on %s", state.name, version, ", ".join(missing))
        return missing

    def _remove_leftovers(self, state: DeploymentState, rollout: Rollout) -> list[int]:
        """Remove a dead publisher's staging model and version folders without provenance (an
        interrupted upload or prune). Complete versions that never served are left to
        :meth:`prune` (or reused by the next publish of the same files). ``state.versions``
        keeps their numbers, so the next version number is never one a dead publisher used."""
        staging_folders, staging_files = self.store.list_dir(f"{staging_name(state.name)}/")
        if staging_folders or staging_files:
            logger.warning("Removing the staging model left by an interrupted rollout of %s", state.name)
            rollout.clean_staging()
        removed = []
        for version in list(state.versions):
            if version == state.serving_version:
                continue
            if PROVENANCE_FILE not in self.store.list_dir(f"{state.name}/{version}/")[1]:
                rollout.lease.check("removing leftovers")
                logger.warning("Removing %s version %d left by an interrupted publish", state.name, version)
                self.store.delete_prefix(f"{state.name}/{version}/")
                removed.append(version)
        return removed

    def _discard(self, prefix: str) -> None:
        try:
            self.store.delete_prefix(prefix)
        except Exception as err:  # the original error matters more; the version is not served
            logger.warning("Could not remove the partial upload %s: %s", prefix, err)

    # -- rollback ------------------------------------------------------------------------------
    def activate(
        self, name: str, version: int, verify: Verifier | None = None, lease_wait_s: float | None = None
    ) -> PublishResult:
        """Serve an already published ``version`` again (rollback), verified first, with the
        config it had. The history records that the serving version was rolled back from."""
        self.store.check()
        self.check_servers()
        with self.lease(name, lease_wait_s) as lease:
            state = self.read_state(name)
            provenance = self.read_provenance(name, version)
            if version not in state.versions or provenance is None:
                raise MlflowException(
                    f"{name!r} has no published version {version} in {self.store.uri} "
                    f"(versions: {state.versions}).",
                    error_code=RESOURCE_DOES_NOT_EXIST,
                )
            rollout = self._rollout(name, lease)
            message = mcfg.parse_pbtxt(provenance["config_pbtxt"])
            try:
                rollout.verify(version, message, provenance, verify)
            except VersionRefused as err:
                rollout.refuse(version, "rollback", err.message)
                raise MlflowException(
                    f"Rollback of {name!r} to version {version} was refused; version "
                    f"{state.serving_version} still serves. {err.message}",
                    error_code=err.error_code,
                ) from err
            rollout.switch(
                version, message, state.config_bytes, state.serving_version, "rollback",
                verified=verify is not None, rolled_back_from=state.serving_version,
                registered_model=provenance.get("registered_model"),
                registered_version=provenance.get("registered_version"),
            )  # fmt: skip
            return PublishResult(
                name, version, state.serving_version, True, flavor=provenance["flavor"],
                provenance=provenance, verified=verify is not None,
            )  # fmt: skip

    def previous_good(self, name: str, state: DeploymentState | None = None) -> int | None:
        """The version ``rollback`` goes to by default: the previous serving version that was
        neither refused nor rolled back from, and is still in the repository."""
        state = state or self.read_state(name)
        history = self.read_history(name)
        if history.events:
            return history.previous_good(state.serving_version, state.versions)
        older = [v for v in state.versions if state.serving_version is not None and v < state.serving_version]
        return max(older) if older else None  # a repository published before the history

    def prune(self, name: str, keep: int, serving: int, rollout: Rollout) -> list[int]:
        """Delete versions that never served, and the oldest others so that ``keep`` remain;
        never the serving version nor the last known-good one (the rollback target).
        Provenance goes first, so a prune interrupted half-way leaves a folder the next
        publisher recognizes and removes."""
        state = self.read_state(name)
        protected = {serving, rollout.history.previous_good(serving, state.versions)} - {None}
        served = rollout.history.served()
        never_served = [v for v in state.versions if v > serving and v not in served]
        others = sorted((v for v in state.versions if v not in protected and v not in never_served), reverse=True)
        doomed = sorted(never_served + others[max(0, keep - len(protected)) :])
        for version in doomed:
            rollout.lease.check("prune")
            self.store.delete(f"{name}/{version}/{PROVENANCE_FILE}")
            self.store.delete_prefix(f"{name}/{version}/")
        if doomed:
            logger.info("Pruned %s versions %s", name, doomed)
        return doomed

    def delete(self, name: str) -> None:
        """Unload everywhere, then remove ``NAME/`` from the repository. Idempotent."""
        validate_model_name(name)
        self.cluster.unload_model(name, ignore_missing=True)
        removed = self.store.delete_prefix(f"{name}/")
        logger.info("Deleted %s (%d objects) from %s", name, removed, self.store.uri)


def _config_pins(store: ModelRepositoryStore, name: str, version: int) -> bool:
    try:
        raw = store.read_bytes(f"{name}/{CONFIG_FILE}")
    except Exception:
        return True  # unknown: keep the upload; the next publisher's repair decides
    return raw is not None and version in mcfg.serving_versions(mcfg.parse_pbtxt(raw))


def _is_model_name(folder: str) -> bool:
    try:
        validate_model_name(folder)
        return True
    except MlflowException:
        return False


def _tensor_entry(spec: mcfg.TensorSpec) -> dict[str, str]:
    return {"mlflow": spec.source_name, "triton": spec.name, "datatype": spec.triton_dtype}


def _with_signature_names(io: mcfg.ModelIO, signature) -> mcfg.ModelIO:
    """Keep the ONNX graph's names for Triton, but the MLflow signature's for ``predict``."""
    if signature is None or signature.inputs is None or not signature.inputs.is_tensor_spec():
        return io

    def rename(specs, schema):
        names = [s.name for s in schema.inputs] if schema is not None else []
        if len(names) != len(specs) or not all(names):
            return specs
        return tuple(mcfg.TensorSpec(s.name, s.data_type, s.shape, n) for s, n in zip(specs, names))

    return mcfg.ModelIO(rename(io.inputs, signature.inputs), rename(io.outputs, signature.outputs))
