"""Rollback: serve an earlier published version again, verified first, on every replica."""

from __future__ import annotations

import logging
import time

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_triton.fleet.discovery import resolve_urls
from mlflow_triton.promotion.reports import RollbackResult
from mlflow_triton.promotion.spec import PromotionSpec
from mlflow_triton.repository.concurrency import concurrently
from mlflow_triton.rollout.publisher import ModelPublisher, PublishResult, ServingChanged
from mlflow_triton.rollout.repair import previous_good, remove_leftovers
from mlflow_triton.rollout.switch import Rollout, VersionRefused
from mlflow_triton.rollout.verification import SmokeTest, Verifier
from mlflow_triton.settings.deployment import validate_model_name
from mlflow_triton.triton_config.model_config import parse_pbtxt

logger = logging.getLogger(__name__)


def rollback(
    spec: PromotionSpec,
    deployment: str,
    to_version: int | None = None,
    set_alias: str | None = None,
) -> RollbackResult:
    """Serve an earlier published version of ``deployment`` again, on every replica.

    Without ``to_version`` it goes to the previous serving version, like ``kubectl rollout
    undo``, as the serving history records it: never a version that was refused, nor one
    that was rolled back from. ``prune`` always keeps that version. The rollback is a rollout
    like any other (:func:`activate`): the lease, verification under a staging
    name when ``spec.smoke_test``, then the switch; a refused target changes nothing.

    The registry alias is not moved unless ``set_alias`` is given. A running ``watch`` (or the
    next ``sync``) then publishes the alias version again. Pass ``set_alias="production"`` to
    point the alias at the rolled-back registry version, so the rollback sticks.

    Args:
        spec: gives the repository, the Triton replicas and the deployment's config.
        deployment: the Triton model name.
        to_version: repository version to serve; default: the previous serving version.
        set_alias: also move this registry alias to the registry version now served.

    Returns:
        A :class:`RollbackResult`.

    Raises:
        MlflowException: RESOURCE_DOES_NOT_EXIST when no such (or no earlier) version is kept;
            INVALID_PARAMETER_VALUE for a version that was refused; INTERNAL_ERROR when the
            target fails verification (the serving version is untouched).

    Example::

        rollback(load_spec(require_models=False), "fraud")    # mlflow-triton rollback fraud
    """
    validate_model_name(deployment)
    started = time.monotonic()
    publisher = ModelPublisher.for_config(
        spec.config_for(deployment), resolve_urls(spec.triton_urls), target=spec.target_uri
    )
    # Independent reads, at once (each S3 request costs a round trip of latency).
    state, history = concurrently(lambda: publisher.read_state(deployment), lambda: publisher.read_history(deployment))
    if not state.exists or state.serving_version is None:
        raise MlflowException(
            f"No deployment named {deployment!r} in {publisher.store.uri}.",
            error_code=RESOURCE_DOES_NOT_EXIST,
        )
    if to_version is None:
        version = previous_good(state, history)
        if version is None:
            raise MlflowException(
                f"{deployment!r} has no earlier known-good version to roll back to (serving "
                f"{state.serving_version}, versions kept: {state.versions}); pass --to VERSION.",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
    else:
        version = to_version
        if version in history.refused() and version not in history.served():
            raise MlflowException.invalid_parameter_value(
                f"{deployment!r} version {version} was refused when it was rolled out; "
                "publish a fixed model instead."
            )
    provenance = publisher.read_provenance(deployment, version) if version in state.versions else None
    if provenance is None:
        raise MlflowException(
            f"{deployment!r} has no published version {version} in {publisher.store.uri} "
            f"(versions kept: {state.versions}).",
            error_code=RESOURCE_DOES_NOT_EXIST,
        )
    registered = provenance.get("registered_model"), provenance.get("registered_version")
    if set_alias and not all(registered):
        raise MlflowException.invalid_parameter_value(
            f"{deployment!r} version {version} was not published from the Model Registry "
            f"(model URI {provenance.get('model_uri')}), so no alias can point at it."
        )
    result = RollbackResult(deployment, version, state.serving_version, False, *registered)
    if version != state.serving_version:
        verify = (
            SmokeTest.for_provenance(publisher.store, publisher.cluster, provenance)
            if spec.smoke_test else None
        )  # fmt: skip
        activate(
            publisher, deployment, version, verify=verify, lease_wait_s=spec.lease_wait_s,
            expected_serving=state.serving_version,
        )  # fmt: skip
        result.changed = True
    if set_alias:
        from mlflow import MlflowClient

        try:
            MlflowClient().set_registered_model_alias(registered[0], set_alias, registered[1])
        except MlflowException as err:
            raise MlflowException(
                f"{deployment!r} now serves version {version}, but alias {set_alias!r} of "
                f"{registered[0]!r} could not be moved to version {registered[1]}: {err.message}",
                error_code=err.error_code,
            ) from err
        result.alias_set = set_alias
    result.seconds = round(time.monotonic() - started, 3)
    logger.info(
        "Rolled back %s to version %d (was %s; registry %s version %s)%s", deployment, version,
        state.serving_version, registered[0], registered[1],
        f"; alias {set_alias!r} moved" if set_alias else "",
    )  # fmt: skip
    return result


def activate(
    publisher: ModelPublisher, name: str, version: int, verify: Verifier | None = None,
    lease_wait_s: float | None = None, expected_serving: int | None = None,
) -> PublishResult:  # fmt: skip
    """Serve an already published ``version`` again (rollback), verified first, with the
    config it had. The history records that the serving version was rolled back from.

    Args:
        expected_serving: the serving version the caller chose ``version`` against; if
            another publisher changed it meanwhile, :class:`ServingChanged` is raised.
    """
    publisher.store.check()
    publisher.check_servers()
    with publisher.lease(name, lease_wait_s) as lease:
        # Under the lease nothing changes between these reads: all three at once.
        state, provenance, history = concurrently(
            lambda: publisher.read_state(name), lambda: publisher.read_provenance(name, version),
            lambda: publisher.read_history(name),
        )  # fmt: skip
        if expected_serving is not None and state.serving_version != expected_serving:
            raise ServingChanged(
                f"{name!r} now serves version {state.serving_version}, not {expected_serving}: "
                "another publish happened; choose the rollback target again."
            )
        if version not in state.versions or provenance is None:
            raise MlflowException(
                f"{name!r} has no published version {version} in {publisher.store.uri} "
                f"(versions: {state.versions}).",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
        rollout = Rollout(publisher.store, publisher.cluster, name, lease, history, target=publisher.target)
        remove_leftovers(publisher, state, rollout)
        message = parse_pbtxt(provenance["config_pbtxt"])
        try:
            rollout.verify(version, message, provenance, verify)
            rollout.switch(
                version, message, state.config_bytes, state.serving_version, "rollback",
                verified=verify is not None, rolled_back_from=state.serving_version,
                registered_model=provenance.get("registered_model"),
                registered_version=provenance.get("registered_version"),
            )  # fmt: skip
        except VersionRefused as err:
            rollout.refuse(
                version, "rollback", err.message, registered_model=provenance.get("registered_model"),
                registered_version=provenance.get("registered_version"),
            )  # fmt: skip
            raise MlflowException(
                f"Rollback of {name!r} to version {version} was refused; version "
                f"{state.serving_version} still serves. {err.message}",
                error_code=err.error_code,
            ) from err
        return PublishResult(
            name, version, state.serving_version, True, flavor=provenance["flavor"],
            provenance=provenance, verified=verify is not None,
        )  # fmt: skip
