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
from mlflow_triton.repository.history import ServingHistory
from mlflow_triton.repository.layout import validate_model_name
from mlflow_triton.repository.state import DeploymentState, read_state
from mlflow_triton.repository.stores import open_store
from mlflow_triton.rollout.interrupts import Interrupted
from mlflow_triton.rollout.publisher import ModelPublisher
from mlflow_triton.rollout.repair import previous_good

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
    like any other (:meth:`ModelPublisher.activate`): the lease, verification under a staging
    name when ``spec.smoke_test``, then the switch; a refused target changes nothing, and so
    does an interrupt before the switch (one during it waits until it is recorded).

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

    Example: ``rollback(load_spec(require_models=False), "fraud")`` (``mlflow-triton rollback fraud``).
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
    version = _target_version(state, history, to_version)
    registered = _registered_version(publisher, state, version, set_alias)
    result = RollbackResult(deployment, version, state.serving_version, False, *registered)
    if version != state.serving_version:
        _activate(publisher, spec, state, version)
        result.changed = True
    if set_alias:
        _move_alias(deployment, version, registered, set_alias)
        result.alias_set = set_alias
    result.seconds = round(time.monotonic() - started, 3)
    logger.info("Rolled back %s to version %d (was %s; registry %s version %s)%s", deployment, version,
                state.serving_version, *registered, f"; alias {set_alias!r} moved" if set_alias else "")  # fmt: skip
    return result


def _activate(publisher: ModelPublisher, spec: PromotionSpec, state: DeploymentState, version: int) -> None:
    try:
        publisher.activate(
            state.name, version, verify=spec.smoke_test, lease_wait_s=spec.lease_wait_s,
            expected_serving=state.serving_version,
        )  # fmt: skip
    except KeyboardInterrupt as err:  # activate says what serves; if not, the CLI reads it
        raise Interrupted.of(err, state.name, None, known=False) from err


def serving_version(spec: PromotionSpec, deployment: str) -> int | None:
    """The version ``deployment`` serves now, as its repository pins it (what an interrupted
    ``rollback`` tells the user)."""
    config = spec.config_for(deployment)
    return read_state(open_store(config.require_repository(), config.s3_endpoint_url), deployment).serving_version


def _registered_version(
    publisher: ModelPublisher, state: DeploymentState, version: int, set_alias: str | None
) -> tuple[str | None, str | None]:
    """(registered model, registry version) that repository ``version`` was published from;
    refused up front when the version is not kept, or ``set_alias`` has nothing to point at."""
    deployment = state.name
    provenance = publisher.read_provenance(deployment, version) if version in state.versions else None
    if provenance is None:
        raise MlflowException(
            f"{deployment!r} has no published version {version} in {publisher.store.uri} "
            f"(versions kept: {state.versions}).",
            error_code=RESOURCE_DOES_NOT_EXIST,
        )
    registered = provenance.registered_model, provenance.registered_version
    if set_alias and not all(registered):
        raise MlflowException.invalid_parameter_value(
            f"{deployment!r} version {version} was not published from the Model Registry "
            f"(model URI {provenance.model_uri}), so no alias can point at it."
        )
    return registered


def _target_version(state: DeploymentState, history: ServingHistory, to_version: int | None) -> int:
    """``to_version``, unless it was refused; by default the previous good serving version."""
    if to_version is None:
        version = previous_good(state, history)
        if version is None:
            raise MlflowException(
                f"{state.name!r} has no earlier known-good version to roll back to (serving "
                f"{state.serving_version}, versions kept: {state.versions}); pass --to VERSION.",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
        return version
    if to_version in history.refused() and to_version not in history.served():
        raise MlflowException.invalid_parameter_value(
            f"{state.name!r} version {to_version} was refused when it was rolled out; "
            "publish a fixed model instead."
        )
    return to_version


def _move_alias(deployment: str, version: int, registered: tuple, alias: str) -> None:
    from mlflow import MlflowClient

    try:
        MlflowClient().set_registered_model_alias(registered[0], alias, registered[1])
    except MlflowException as err:
        raise MlflowException(
            f"{deployment!r} now serves version {version}, but alias {alias!r} of "
            f"{registered[0]!r} could not be moved to version {registered[1]}: {err.message}",
            error_code=err.error_code,
        ) from err
