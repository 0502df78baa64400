"""Publishing a model version into a Triton repository, as one transaction.

Layout written for model ``NAME`` (Triton's repository layout plus one provenance file)::

    <repo>/NAME/config.pbtxt                 version_policy pins the serving version
    <repo>/NAME/<N>/model.onnx | model.pt
    <repo>/NAME/<N>/mlflow-triton.json       provenance: MLflow URI, registry version, hashes

A publish never overwrites a served version. It uploads ``N = last + 1``, then swaps
``config.pbtxt`` (a single atomic object write) and asks every Triton replica to load. If a
replica refuses, the previous config is restored, version ``N`` is deleted and replicas that
had switched are reloaded on the previous version: the repository and the serving version
are left as they were. A lease object serializes concurrent publishers of one model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from mlflow_triton import model_config as mcfg
from mlflow_triton.config import DeploymentConfig, validate_model_name
from mlflow_triton.model_source import ModelSource, check_torchscript
from mlflow_triton.server import TritonCluster, is_unreachable, raise_failures
from mlflow_triton.store import ModelRepositoryStore, progress_bar

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
PROVENANCE_FILE = "mlflow-triton.json"
LEASE_FILE = ".mlflow-triton.lease"
LEASE_TTL_S = 900.0
PROVENANCE_SCHEMA = 1
#: DeploymentConfig keys recorded in provenance: same artifact + same settings = no-op.
CONFIG_SETTINGS = (
    "max_batch_size", "dynamic_batching", "preferred_batch_size",
    "max_queue_delay_microseconds", "instance_kind", "instance_count",
)  # fmt: skip

#: ``verify(version, local_model_file)``: raise to reject a version that Triton loaded.
VerifyFn = Callable[[int, Path], None]

#: Lease tokens of this process whose publish ended but whose release failed (S3 unreachable):
#: stale by construction, so this process's next publish of that model may take them over.
_UNRELEASED_LEASES: set[str] = set()


@dataclass
class DeploymentState:
    """What the repository says about one model."""

    name: str
    config: Any  # model_config_pb2.ModelConfig | None
    config_bytes: bytes | None
    versions: list[int]
    serving_version: int | None
    provenance: dict[str, Any] | None

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ModelPublisher:
    """Publishes, activates and deletes model versions in one repository for one cluster."""

    def __init__(self, store: ModelRepositoryStore, cluster: TritonCluster, config: DeploymentConfig):
        self.store = store
        self.cluster = cluster
        self.config = config

    # -- reading -----------------------------------------------------------------------------
    def read_state(self, name: str) -> DeploymentState:
        validate_model_name(name)
        config_bytes = self.store.read_bytes(f"{name}/{CONFIG_FILE}")
        folders, _ = self.store.list_dir(f"{name}/")
        versions = sorted(int(f) for f in folders if f.isdigit())
        config = mcfg.parse_pbtxt(config_bytes) if config_bytes is not None else None
        serving = mcfg.serving_versions(config) if config is not None else []
        serving_version = serving[-1] if serving else (versions[-1] if versions and config else None)
        provenance = self.read_provenance(name, serving_version) if serving_version else None
        return DeploymentState(name, config, config_bytes, versions, serving_version, provenance)

    def read_provenance(self, name: str, version: int) -> dict[str, Any] | None:
        raw = self.store.read_bytes(f"{name}/{version}/{PROVENANCE_FILE}")
        return json.loads(raw) if raw else None

    def deployments(self) -> list[DeploymentState]:
        """The state of every model folder in the repository that has a config.pbtxt."""
        folders, _ = self.store.list_dir("")
        states = (self.read_state(f) for f in folders if _is_model_name(f))
        return [state for state in states if state.exists]

    # -- the lease ---------------------------------------------------------------------------
    @contextmanager
    def lease(self, name: str, ttl_s: float = LEASE_TTL_S) -> Iterator[None]:
        """Hold ``NAME/.mlflow-triton.lease`` (created with a conditional write) while publishing."""
        key = f"{name}/{LEASE_FILE}"
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        body = json.dumps({"owner": token, "expires_at": time.time() + ttl_s}).encode()
        if not self.store.create_exclusive(key, body):
            held = json.loads(self.store.read_bytes(key) or b"{}")
            unreleased = held.get("owner") in _UNRELEASED_LEASES
            if not unreleased and held.get("expires_at", 0) > time.time():
                raise MlflowException(
                    f"Another publish of {name!r} holds the lease {self.store.url(key)} "
                    f"(owner {held.get('owner')}); retry when it finishes, or delete the lease "
                    "object if that process died.",
                    error_code=RESOURCE_ALREADY_EXISTS,
                )
            logger.warning(
                "Taking over the %s lease of %s held by %s", "unreleased" if unreleased else "expired",
                name, held.get("owner"),
            )  # fmt: skip
            _UNRELEASED_LEASES.discard(held.get("owner"))
            self.store.delete(key)
            if not self.store.create_exclusive(key, body):
                raise MlflowException(
                    f"Another publish of {name!r} took the lease first; retry.",
                    error_code=RESOURCE_ALREADY_EXISTS,
                )
        try:
            yield
        finally:
            self._release(key, token)

    def _release(self, key: str, token: str) -> None:
        """Delete the lease if it is still ours; never hide the publish's own error."""
        try:
            held = json.loads(self.store.read_bytes(key) or b"{}")
            if held.get("owner") == token:
                self.store.delete(key)
        except Exception as err:  # S3 unreachable: the lease stays until it expires
            _UNRELEASED_LEASES.add(token)
            logger.warning(
                "Could not release the lease %s: %s. Publishes from other processes wait until it "
                "expires, unless the object is deleted.", self.store.url(key), err,
            )  # fmt: skip

    # -- publishing --------------------------------------------------------------------------
    def check_servers(self) -> None:
        """Fail before writing anything when a Triton replica does not answer."""
        down = {url: None for url in self.cluster.urls}
        for url in self.cluster.urls:
            with self.cluster.server(url) as server:
                if server.is_live():
                    down.pop(url)
        if down:
            raise MlflowException(
                f"Triton unreachable at {', '.join(down)}: nothing was published. Check the target "
                "URI / TRITON_URL and that tritonserver runs with --model-control-mode=explicit.",
                error_code=TEMPORARILY_UNAVAILABLE,
            )

    def publish(
        self, name: str, source: ModelSource, mode: str = "any", verify: VerifyFn | None = None
    ) -> PublishResult:
        """Publish ``source`` as the serving version of ``name`` and load it everywhere.

        Args:
            mode: ``create`` (fail if it exists), ``update`` (fail if missing) or ``any``.
            verify: called as ``verify(version, local_model_file)`` once every replica reports
                the version READY (e.g. a smoke inference); if it raises, the publish is rolled
                back like a refusal.
        """
        validate_model_name(name)
        self.store.check()
        self.check_servers()
        with self.lease(name):
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
            with tempfile.TemporaryDirectory(prefix="mlflow-triton-") as tmp:
                return self._publish_locked(state, source, Path(tmp), verify)

    def _publish_locked(
        self, state: DeploymentState, source: ModelSource, tmp: Path, verify: VerifyFn | None
    ) -> PublishResult:
        name = state.name
        serving = state.provenance or {}
        started = time.monotonic()
        settings = self._settings(source.flavor)
        # 1. The very artifact that serves, with the same settings: nothing to read or write.
        if serving.get("source_uri") == source.artifact_uri and serving.get("settings") == settings:
            return self._unchanged(state, source)

        # 2. Server-side copy when the MLflow artifacts sit on the repository's S3 endpoint and
        #    the tensors are known without reading the model; else 3. download once, hash, upload.
        #    ONNX weights may live in external-data files beside model.onnx (MLflow's default):
        #    they are published with it, under the same relative names.
        filename = mcfg.MODEL_FILENAMES[source.flavor]
        local: Path | None = None
        io = self._signature_io(source)
        external: list[str] = []
        if source.companion_files():
            local = source.download(tmp)
            io = self._model_io(source, local)
            external = self._external_data(source, local)
        files = [(source.artifact_uri, filename)] + [(source.sibling_uri(n), n) for n in external]
        remote = [self.store.stat_uri(uri) for uri, _ in files] if io is not None else []
        copy = bool(remote) and all(remote)
        if copy:
            entries = [{"file": target, **stat} for (_, target), stat in zip(files, remote)]
            if source.flavor == "torchscript":
                with self.store.open_uri(source.artifact_uri) as reader:
                    check_torchscript(reader, source.model_uri)
        else:
            local = local or source.download(tmp)
            io = self._model_io(source, local)
            paths = [local] + [source.download(local.parent, n) for n in external]
            entries = [
                {"file": target, "sha256": sha256_file(path), "size": path.stat().st_size}
                for (_, target), path in zip(files, paths)
            ]
        assert io is not None
        artifact, external_entries = entries[0], entries[1:]
        if (
            serving.get("artifact") == artifact
            and serving.get("external_data", []) == external_entries
            and serving.get("settings") == settings
        ):
            return self._unchanged(state, source)

        version = max(state.versions + [state.serving_version or 0]) + 1
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
        try:
            for (uri, target), entry in zip(files, entries):
                if copy:
                    copied += self.store.copy_from(uri, prefix + target) or 0
                else:
                    path = local if target == filename else local.parent / target
                    uploaded += self.store.upload_file(
                        path, prefix + target, progress_bar(entry["size"], f"upload {name}/{version}/{target}")
                    )
            self.store.write_bytes(prefix + PROVENANCE_FILE, json.dumps(provenance, indent=2).encode())
        except BaseException:
            self._discard(prefix)
            raise
        logger.info(
            "%s %s version %d (%d bytes) to %s", "Copied" if copied else "Uploaded", name, version,
            copied or uploaded, self.store.url(prefix),
        )  # fmt: skip

        def check(v: int) -> None:
            assert verify is not None
            verify(v, local if local is not None else source.download(tmp))

        self._switch(name, message, version, state, check if verify else None)
        pruned = self.prune(name, keep=self.config.keep_versions, serving=version)
        logger.info("Published %s version %d in %.1fs", name, version, time.monotonic() - started)
        return PublishResult(
            name, version, state.serving_version, True, bytes_uploaded=uploaded,
            bytes_copied=copied, flavor=source.flavor, provenance=provenance, pruned=pruned,
        )  # fmt: skip

    def _settings(self, flavor: str) -> dict[str, Any]:
        """The deployment settings that shape the generated config."""
        return {"flavor": flavor, **{key: getattr(self.config, key) for key in CONFIG_SETTINGS}}

    def _signature_io(self, source: ModelSource) -> mcfg.ModelIO | None:
        """Tensor specs from the signature when it names every tensor, else None."""
        signature = source.signature
        if signature is None or signature.inputs is None or signature.outputs is None:
            return None
        if not signature.inputs.is_tensor_spec() or not all(
            spec.name for schema in (signature.inputs, signature.outputs) for spec in schema.inputs
        ):
            return None
        try:
            return mcfg.io_from_signature(signature, source.flavor)
        except MlflowException:
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

    def _model_io(self, source: ModelSource, local: Path) -> mcfg.ModelIO:
        if source.flavor == "onnx":
            io = mcfg.io_from_onnx(local)
            return _with_signature_names(io, source.signature)
        return mcfg.io_from_signature(source.signature, source.flavor)

    def _unchanged(self, state: DeploymentState, source: ModelSource) -> PublishResult:
        """Same bytes, same settings: record the registry coordinates and make sure it serves."""
        name, version = state.name, state.serving_version
        assert version is not None and state.provenance is not None
        provenance = dict(state.provenance)
        if any(provenance.get(k) != v for k, v in source.provenance().items()):
            provenance.update(source.provenance())
            self.store.write_bytes(f"{name}/{version}/{PROVENANCE_FILE}", json.dumps(provenance, indent=2).encode())
        not_ready = self.cluster.not_ready(name, version)
        if not_ready:
            raise_failures(f"load {name!r} version {version}", self.cluster.load_model(name, version, not_ready))
        logger.info("%s version %d already serves this model: nothing uploaded", name, version)
        return PublishResult(name, version, version, False, flavor=source.flavor, provenance=provenance)

    def _discard(self, prefix: str) -> None:
        try:
            self.store.delete_prefix(prefix)
        except Exception as err:  # the original error matters more; the version is not served
            logger.warning("Could not remove the partial upload %s: %s", prefix, err)

    def _switch(
        self, name: str, message, version: int, state: DeploymentState,
        verify: Callable[[int], None] | None = None,
    ) -> None:  # fmt: skip
        """Point config.pbtxt at ``version`` and load it everywhere, or put everything back."""
        config_key = f"{name}/{CONFIG_FILE}"
        self.store.write_bytes(config_key, mcfg.to_pbtxt(message).encode())
        errors = self.cluster.load_model(name, version)
        failed = {url: err for url, err in errors.items() if err is not None}
        if failed and all(is_unreachable(err) for err in failed.values()):
            raise MlflowException(
                f"{name!r} version {version} is published in {self.store.uri} but Triton at "
                f"{', '.join(sorted(failed))} did not reload it (unreachable). Rerun the same "
                "`mlflow deployments update` (or `mlflow-triton sync`) when it is back: nothing "
                "will be uploaded again.",
                error_code=TEMPORARILY_UNAVAILABLE,
            )
        if not failed and verify is not None:
            try:
                verify(version)
            except Exception as err:
                failed = {"smoke test": err}
        if not failed:
            return
        # A replica refused the new version: restore the repository and the serving version.
        switched = [url for url, err in errors.items() if err is None]
        self._restore(name, version, state, switched)
        details = "; ".join(
            f"{where}: {err.message if isinstance(err, MlflowException) else err}"
            for where, err in failed.items()
        )
        restored = f"version {state.serving_version}" if state.serving_version else "no version"
        raise MlflowException(
            f"{name!r} version {version} was rejected, so it was not published and the "
            f"repository still serves {restored}. {details}",
            error_code=INTERNAL_ERROR,
        )

    def _restore(self, name: str, version: int, state: DeploymentState, switched: list[str]) -> None:
        """Put back the previous config, drop ``version`` and reload replicas that switched."""
        config_key = f"{name}/{CONFIG_FILE}"
        if state.config_bytes is not None:
            self.store.write_bytes(config_key, state.config_bytes)
        else:
            self.store.delete(config_key)
        if version not in state.versions:  # a rollback target is kept, a new upload is not
            self._discard(f"{name}/{version}/")
        if switched and state.serving_version is not None:
            errors = self.cluster.load_model(name, state.serving_version, switched)
            for url, err in errors.items():
                if err is not None:
                    logger.error("Could not reload %s version %s on %s: %s", name, state.serving_version, url, err)
        elif switched:
            self.cluster.unload_model(name)

    def activate(self, name: str, version: int, verify: Callable[[int], None] | None = None) -> PublishResult:
        """Serve an already published ``version`` again (rollback), with the config it had."""
        self.store.check()
        self.check_servers()
        with self.lease(name):
            state = self.read_state(name)
            provenance = self.read_provenance(name, version)
            if version not in state.versions or provenance is None:
                raise MlflowException(
                    f"{name!r} has no published version {version} in {self.store.uri} "
                    f"(versions: {state.versions}).",
                    error_code=RESOURCE_DOES_NOT_EXIST,
                )
            message = mcfg.parse_pbtxt(provenance["config_pbtxt"])
            message.version_policy.specific.ClearField("versions")
            message.version_policy.specific.versions.append(version)
            self._switch(name, message, version, state, verify)
            return PublishResult(
                name, version, state.serving_version, True, flavor=provenance["flavor"],
                provenance=provenance,
            )  # fmt: skip

    def prune(self, name: str, keep: int, serving: int) -> list[int]:
        """Delete the oldest versions so that ``keep`` remain (never the serving one)."""
        older = [v for v in self.read_state(name).versions if v != serving]
        doomed = older[: max(0, len(older) - (keep - 1))]
        for version in doomed:
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
