"""One publish of one model version: executing a flavor's plan as a transaction.

Run by :meth:`~mlflow_triton.rollout.publisher.ModelPublisher.publish` under the deployment's
lease, after the repair of what an interrupted publisher left. In order:

1. the cheap no-op: the serving version came from the same artifact with the same settings;
2. the plan (:mod:`mlflow_triton.flavors`) and where its files are
   (:func:`~mlflow_triton.repository.transfer.locate`); the same bytes with the same settings
   are a no-op too;
3. the smoke inputs and the config, so that a model Triton cannot take, or whose example does
   not fit, is refused before any byte is written (a streamed model: right after its upload);
4. a version number claimed with a conditional create, the files moved into the staging
   folder, the warmup files written;
5. the rollout: loaded and verified under the staging name while the version folder is built
   from the staging folder, its provenance written last (a version folder without one is an
   interrupted upload); then switched in.

A refused version is deleted and recorded as refused; the repository and the serving version
are left as they were. An interrupt (:mod:`mlflow_triton.rollout.interrupts`) before the
switch removes the candidate the same way; during the switch it is deferred until the switch
is recorded; a requested stop (``sync``) is checked between the steps. Nothing here asks which
flavor the model is.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.exceptions import MlflowException

from mlflow_triton.flavors.base import PublishPlan
from mlflow_triton.flavors.source import ModelSource
from mlflow_triton.fleet.errors import ReplicaUnreachable
from mlflow_triton.repository.layout import (
    CLAIM_FILE,
    CONFIG_FILE,
    WARMUP_FOLDER,
    staging_name,
    version_prefix,
)
from mlflow_triton.repository.lease import LeaseLost
from mlflow_triton.repository.provenance import Provenance, read_provenance, write_provenance
from mlflow_triton.repository.references import file_digest, save_reference
from mlflow_triton.repository.state import DeploymentState
from mlflow_triton.repository.store import ModelRepositoryStore
from mlflow_triton.repository.transfer import Located, locate, read_inspection, transfer
from mlflow_triton.rollout import interrupts, repair
from mlflow_triton.rollout.interrupts import Interrupted
from mlflow_triton.rollout.smoke_inputs import SmokeInputs, derive_smoke_inputs
from mlflow_triton.rollout.switch import Rollout, VersionRefused
from mlflow_triton.rollout.verification import SmokeTest, VerificationUnavailable, runtime_available
from mlflow_triton.triton_config.model_config import parse_pbtxt, serving_versions, to_pbtxt
from mlflow_triton.triton_config.tensors import ModelIO, provenance_entry
from mlflow_triton.triton_config.warmup import WarmupPlan, plan_warmup, warmup_enabled

if TYPE_CHECKING:
    from mlflow_triton.rollout.publisher import ModelPublisher

logger = logging.getLogger(__name__)


def claim_version(store: ModelRepositoryStore, name: str, first: int) -> int:
    """Reserve the first free version number from ``first`` with a conditional create of a
    marker in its folder, before any byte is uploaded: a publisher that lost its lease
    mid-upload and a publisher that took the lease over can never pick the same number."""
    version = first
    while store.create_exclusive(f"{version_prefix(name, version)}{CLAIM_FILE}", b"") is None:
        version += 1
    return version


class Unchanged(Exception):
    """The serving version already holds this model with these settings.

    Attributes:
        plan: the plan, when the model was planned before that was known (its prerequisites
            may still have changed: an ensemble whose own files did not change, but one of
            whose logged composing models did).
    """

    def __init__(self, plan: PublishPlan | None = None) -> None:
        super().__init__()
        self.plan = plan


class PublishTransaction:
    """The state of one publish (see the module docstring): :meth:`plan`, then :meth:`publish`."""

    def __init__(
        self, publisher: "ModelPublisher", state: DeploymentState, source: ModelSource, rollout: Rollout,
        verify: bool, workdir: Path,
    ) -> None:  # fmt: skip
        self.publisher = publisher
        self.store = publisher.store
        self.config = publisher.config
        self.state = state
        self.name = state.name
        self.source = source
        self.rollout = rollout
        self.verify = verify
        self.workdir = workdir
        self.settings = self.config.settings(source.flavor.name)
        self.serving = state.provenance
        self.smoke: SmokeInputs | None = None

    # -- the steps ---------------------------------------------------------------------------
    def plan(self) -> tuple[PublishPlan, Located]:
        """The flavor's plan and where its files are.

        Raises:
            Unchanged: the serving version came from this artifact, or holds these bytes,
                with these settings.
        """
        serving = self.serving
        if serving is not None and serving.source_uri == self.source.artifact_uri and dict(serving.settings) == self.settings:
            raise Unchanged()
        plan = self.source.flavor.plan(self.source, self.config, self.workdir)
        located = locate(self.store, plan.files, plan.inspect, self.workdir)
        if located.entries is not None and serving is not None and serving.holds(located.entries, self.settings):
            raise Unchanged(plan)
        return plan, located

    def publish(self, plan: PublishPlan, located: Located) -> tuple[Provenance, int, int]:
        """Claim a version, move the files, write the provenance, verify and switch:
        (provenance, bytes uploaded, bytes copied)."""
        io = self._io(plan, located)
        if io is not None:  # refuse what Triton cannot take, or an example that does not fit, before any claim
            self._build(plan, io, 0)
        interrupts.checkpoint(self.publisher.cancel, f"claiming a version of {self.name!r}")
        pending = self._pending_upload(located)
        version = pending or self._claim_version()
        self.switching = False
        try:
            uploaded, copied = self._move(plan, located, version, pending)
            provenance, message, verifier = self._write_version(plan, located, version, written=bool(pending))
            files_at = None if pending else version_prefix(staging_name(self.name), version)
            if verifier is not None:  # the local reference run overlaps the build of the folder and the loads
                verifier.start_reference(
                    self.name, version, provenance, None if pending else located.complete_local_copy, files_at
                )  # fmt: skip
            build = None if pending else lambda: self._build_version_folder(provenance)
            self.rollout.verify(version, message, provenance, verifier, build_version=build)
            self._keep_reference(verifier, provenance)
            interrupts.checkpoint(self.publisher.cancel, f"the switch of {self.name!r} to version {version}")
            with interrupts.critical(f"the switch of {self.name!r} to version {version}"):
                self.switching = True
                self.rollout.switch(
                    version, message, self.state.config_bytes, self.state.serving_version, "publish",
                    verified=verifier is not None, **self._registry_details(),
                )  # fmt: skip
        except Unchanged:
            raise
        except KeyboardInterrupt as err:
            raise self._interrupted(err, version, self.switching) from err
        except BaseException as err:
            self._fail(err, version, version_prefix(self.name, version), self.switching)
            raise
        return provenance, uploaded, copied

    def _move(self, plan: PublishPlan, located: Located, version: int, pending: int | None) -> tuple[int, int]:
        """The files into the staging folder ``_mlflow-triton-staging.NAME/<version>/``, from
        which the rollout loads them and builds ``NAME/<version>/`` (or an earlier try's
        upload taken as it is, in ``NAME/<version>/``)."""
        uploaded = copied = 0
        if pending:
            logger.info("%s version %d is already uploaded (an earlier try): nothing to upload", self.name, version)
            self._reuse(plan, located, version)
        else:
            spool = self.workdir / "reference" if self._needs_model_file(plan) else None
            staging = version_prefix(staging_name(self.name), version)
            uploaded, copied = transfer(self.store, located, staging, spool, f"{self.name} version {version}")
        assert located.entries is not None
        if located.streamed and not pending and self.serving is not None and self.serving.holds(located.entries, self.settings):
            # Same bytes under another URI: found out while streaming, so the copy goes.
            self.publisher.discard(self.name, version)
            raise Unchanged()
        return uploaded, copied

    def _write_version(
        self, plan: PublishPlan, located: Located, version: int, written: bool
    ) -> tuple[Provenance, Any, SmokeTest | None]:
        """The warmup files and the provenance. The provenance is written here only when the
        version folder is ``written`` already (an earlier try's upload); else last, once the
        rollout has built the folder (:meth:`_build_version_folder`)."""
        io = self._io(plan, located)
        message, warmup = self._build(plan, io, version)
        for filename, data in (warmup.files if warmup else {}).items():
            self.store.write_bytes(f"{self.name}/{WARMUP_FOLDER}/{filename}", data)
        verifier = SmokeTest(self.store, self.publisher.cluster, plan.flavor, self.smoke) if self.verify else None
        provenance = self._provenance(plan, located, io, message, version, verifier)
        interrupts.checkpoint(self.publisher.cancel, f"staging {self.name!r} version {version}")
        if written:
            self.rollout.lease.check("writing the provenance")
            write_provenance(self.store, provenance)
        return provenance, message, verifier

    def _build_version_folder(self, provenance: Provenance) -> None:
        """``NAME/<version>/`` from the staging folder (server-side, or hard links), then the
        provenance: last, and only by the lease holder (a version folder without provenance
        is an interrupted upload, which the next publisher removes). Runs while the staging
        model loads and is verified (:meth:`Rollout.verify`)."""
        version = provenance.version
        self.store.copy_prefix(version_prefix(staging_name(self.name), version), version_prefix(self.name, version))
        self.rollout.lease.check("writing the provenance")
        write_provenance(self.store, provenance)

    def _keep_reference(self, verifier: SmokeTest | None, provenance: Provenance) -> None:
        """Store what the version was verified with beside it, so that a rollback, a repair or
        a replica heal verify it without a runtime or the model's bytes (best effort)."""
        cases = verifier.reference_cases() if verifier is not None else None
        if cases is None:
            return
        try:
            self.rollout.lease.check("storing the reference outputs")
            save_reference(self.store, self.name, provenance.version, cases, file_digest(provenance.files[0]))
        except LeaseLost:
            raise
        except Exception as err:  # a cache: the version is verified the way it was published instead
            logger.warning("Could not store the reference outputs of %s version %d: %s", self.name, provenance.version, err)

    # -- pieces ------------------------------------------------------------------------------
    def _io(self, plan: PublishPlan, located: Located) -> ModelIO | None:
        return located.inspection.io if located.inspection is not None else plan.io

    def _build(self, plan: PublishPlan, io: ModelIO, version: int) -> tuple[Any, WarmupPlan | None]:
        """The config of ``version`` and its warmup, deriving the smoke inputs first (once)."""
        warmup_on = plan.warmup_count > 0 and warmup_enabled(self.config.warmup, self.config.instance_kind)
        if self.smoke is None and (self.verify or warmup_on):
            self.smoke = derive_smoke_inputs(plan.model, io, self.config.max_batch_size, self.workdir)
        warmup = None
        if warmup_on:
            example = self.smoke.example if self.smoke is not None else None
            warmup = plan_warmup(io, self.config.max_batch_size, example, version, plan.warmup_count)
        return plan.config(self.name, version, io, warmup), warmup

    def _needs_model_file(self, plan: PublishPlan) -> bool:
        """Whether verification will run the model file locally (a stream then keeps a copy)."""
        if not self.verify or self.smoke is not None and self.smoke.origin == "golden":
            return False
        return runtime_available(plan.flavor)

    def _reuse(self, plan: PublishPlan, located: Located, version: int) -> None:
        """An earlier try uploaded this version: take its entries (and tensors) from there."""
        if located.entries is None:
            provenance = read_provenance(self.store, self.name, version)
            assert provenance is not None
            located.entries = list(provenance.files)
        if located.inspection is None and plan.inspect is not None:
            key = version_prefix(self.name, version) + located.files[0][1]
            located.inspection = read_inspection(self.store, key, plan.inspect)

    def _provenance(
        self, plan: PublishPlan, located: Located, io: ModelIO, message: Any, version: int, verifier: SmokeTest | None
    ) -> Provenance:
        assert located.entries is not None
        verification = {"inputs": self.smoke.origin, "reference": verifier.reference} if verifier and self.smoke else {}
        return Provenance(
            name=self.name, version=version, flavor=plan.flavor.name, backend=message.backend,
            origin=self.source.origin(), files=tuple(located.entries),
            tensors={
                "inputs": [provenance_entry(t) for t in io.inputs],
                "outputs": [provenance_entry(t) for t in io.outputs],
            },
            settings=self.settings, config_pbtxt=to_pbtxt(message),
            published_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), verification=verification,
            prerequisites=tuple(p.deployment for p in plan.prerequisites),
        )  # fmt: skip

    def _registry_details(self) -> dict[str, Any]:
        origin = self.source.origin()
        return {
            "registered_model": origin.registered_model, "registered_version": origin.registered_version,
            "model_uri": origin.model_uri,
        }  # fmt: skip

    def _claim_version(self) -> int:
        state, history = self.state, self.rollout.history
        return claim_version(self.store, self.name, max(state.versions + [state.serving_version or 0, history.highest_version()]) + 1)

    def _pending_upload(self, located: Located) -> int | None:
        """A complete version folder that never served and holds these very files with these
        settings (an earlier try that could not reach a replica): reused, not uploaded again.
        A stream is known by its source URI (MLflow artifacts are immutable), the others by
        their content."""
        for version in repair.never_served(self.state, self.rollout.history):
            provenance = read_provenance(self.store, self.name, version)
            if provenance is None or dict(provenance.settings) != self.settings or not provenance.files[0]:
                continue
            same = (
                provenance.source_uri == self.source.artifact_uri
                if located.entries is None
                else list(provenance.files) == located.entries
            )
            present = set(self.store.list_dir(version_prefix(self.name, version))[1])
            if same and {e["file"] for e in provenance.files} <= present:
                return version
        return None

    def _interrupted(self, err: KeyboardInterrupt, version: int, switching: bool) -> Interrupted:
        """What an interrupt leaves: after the switch (the signal was deferred until it was
        recorded), the new version serves; before it, the candidate is removed (unless
        another publisher may hold the lease by now) and nothing changed."""
        if self.rollout.switched == version:
            return Interrupted.of(err, self.name, changed=True, serving=version, detail="the switch had begun and was finished")
        if switching:  # not a signal (they are deferred): what serves is read at the command's edge
            return Interrupted.of(err, self.name, changed=None, known=False)
        with interrupts.critical(f"removing the candidate {self.name!r} version {version}"):
            removed = self.rollout.lease.held_locally() and self.publisher.discard(self.name, version)
        detail = f"candidate version {version} {'removed' if removed else 'left for the next publish to remove'}"
        return Interrupted.of(err, self.name, changed=False, serving=self.state.serving_version, detail=detail)

    def _fail(self, err: BaseException, version: int, prefix: str, switching: bool) -> None:
        """What a failure leaves: a refused version is removed and recorded; an unverified one
        is kept for the retry; anything else removes the upload unless the config pins it."""
        rollout, name = self.rollout, self.name
        restored = f"version {self.state.serving_version}" if self.state.serving_version else "no version"
        if isinstance(err, VersionRefused):
            rollout.lease.check("removing the refused version")  # a lost lease deletes nothing
            repair.delete_version(self.store, name, version)
            details = self._registry_details()
            details.pop("model_uri")
            rollout.refuse(version, "publish", err.message, settings=self.settings, **details)
            raise MlflowException(
                f"{name!r} version {version} was rejected, so it was not published and the "
                f"repository still serves {restored}. {err.message}",
                error_code=err.error_code,
            ) from err
        if isinstance(err, (ReplicaUnreachable, VerificationUnavailable)) and not switching:
            # Complete and unverified: kept (never served, so the next publish either reuses
            # it without uploading or prunes it), but nothing changed for clients.
            raise type(err)(
                f"{name!r} version {version} is uploaded to {self.store.url(prefix)} but could not "
                f"be verified: {err.message} Clients still get {restored}. Rerun the same "
                "`mlflow deployments update` (or `mlflow-triton sync`) when Triton is back: "
                "nothing will be uploaded again.",
                *([err.url] if isinstance(err, ReplicaUnreachable) else []),
            ) from err
        if isinstance(err, (ReplicaUnreachable, VerificationUnavailable, LeaseLost)):
            return  # the config pins the version (the next update reloads it), or the new holder repairs
        # Only while nobody can have taken the lease over (judged locally: the store may be
        # what failed), and never a version the config pins (the next update finishes it).
        if rollout.lease.held_locally() and not (switching and self._config_pins(version)):
            self.publisher.discard(name, version)

    def _config_pins(self, version: int) -> bool:
        try:
            raw = self.store.read_bytes(f"{self.name}/{CONFIG_FILE}")
        except Exception:
            return True  # unknown: keep the upload; the next publisher's repair decides
        return raw is not None and version in serving_versions(parse_pbtxt(raw))
