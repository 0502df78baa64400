"""Prerequisites: what must serve before a model (an ensemble's composing models).

A plan (:class:`~mlflow_triton.flavors.base.PublishPlan`) lists them; every publish executes
them the same way, whoever started it (the plugin, ``sync``, ``watch``, a webhook,
``rollback``): each is published first as its own verified rollout (unchanged files upload
nothing), and if the model itself is then refused, or interrupted before its switch, each
serves again the version it served before, the one the model's previous version was verified
with.
"""

from __future__ import annotations

import logging
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.exceptions import MlflowException

from mlflow_triton.flavors.base import PublishPlan
from mlflow_triton.flavors.registry import resolve_model
from mlflow_triton.fleet.errors import ReplicaUnreachable
from mlflow_triton.repository.lease import LeaseLost
from mlflow_triton.repository.provenance import Provenance
from mlflow_triton.rollout import interrupts
from mlflow_triton.rollout.interrupts import Interrupted
from mlflow_triton.rollout.transaction import PublishTransaction, Unchanged

if TYPE_CHECKING:
    from mlflow_triton.rollout.publisher import ModelPublisher
    from mlflow_triton.rollout.results import PublishResult

logger = logging.getLogger(__name__)


def publish_prerequisites(publisher: "ModelPublisher", plan: PublishPlan, verify: bool) -> list["PublishResult"]:
    """Check that the deployments the plan requires serve, then publish its prerequisites
    (each its own verified rollout; unchanged files upload nothing).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE naming the models that are neither logged
            with it nor deployed, before anything is written.
    """
    missing = [name for name in plan.requires if publisher.read_state(name).serving_version is None]
    if missing:
        raise MlflowException.invalid_parameter_value(
            f"The ensemble {plan.source.model_uri} names model(s) {missing} that are neither logged "
            "beside it nor deployed in the repository. Log them with "
            "triton.log_model(..., composing_models=[...]) or deploy them first."
        )
    published: list["PublishResult"] = []
    try:
        for prerequisite in plan.prerequisites:
            published.append(publisher.publish(prerequisite.deployment, prerequisite.source, verify=verify))
    except KeyboardInterrupt as err:
        _restore_interrupted(publisher, published)
        # The outcome is the model's own (nothing changed for it): its publish fills it in.
        raise Interrupted(err.signum if isinstance(err, Interrupted) else signal.SIGINT) from err
    return published


def publish_restoring(
    publisher: "ModelPublisher", transaction: PublishTransaction, plan: PublishPlan, located: Any,
    composing: list["PublishResult"],
) -> tuple[Provenance, int, int]:
    """The transaction; when it refuses the model, the prerequisites serve again what they
    served before (the previous version was verified with those)."""
    try:
        return transaction.publish(plan, located)
    except (Unchanged, ReplicaUnreachable, LeaseLost):
        raise  # the config may pin the new version already: the rerun it asks for finishes it
    except Interrupted as err:
        if err.outcome is not None and err.outcome.changed is False:
            _restore_interrupted(publisher, composing)
        raise
    except MlflowException as err:
        restored = restore(publisher, composing)
        if not restored:
            raise
        raise MlflowException(
            f"{err.message} Composing models restored to the versions they served: "
            f"{', '.join(restored)}.",
            error_code=err.error_code,
        ) from err


def restore(publisher: "ModelPublisher", results: list["PublishResult"]) -> list[str]:
    """Serve again the versions the prerequisites served before; ``"name: version"`` for
    each restored. Failures are logged, not raised: the model's own error matters."""
    restored = []
    for result in results:
        if not result.changed or result.previous_version is None:
            continue
        try:
            publisher.activate(result.name, result.previous_version, verify=False, expected_serving=result.version)
            restored.append(f"{result.name}: {result.previous_version}")
        except MlflowException as err:
            logger.error("Could not restore %s version %s: %s", result.name, result.previous_version, err.message)
    return restored


def _restore_interrupted(publisher: "ModelPublisher", results: list["PublishResult"]) -> None:
    """After an interrupt before the model's switch: its prerequisites serve again what they
    served before (signals wait: this is the roll back of what the interrupt stopped)."""
    if any(r.changed for r in results):
        with interrupts.critical("restoring the composing models"):
            restored = restore(publisher, results)
        logger.warning("Interrupted: composing models restored to the versions they served: %s", ", ".join(restored))


def republish_prerequisites(publisher: "ModelPublisher", provenance: Provenance, verify: bool) -> None:
    """Publish again what ``provenance``'s version needs to serve, from its MLflow model."""
    source = resolve_model(provenance.registry_uri, provenance.flavor)
    with tempfile.TemporaryDirectory(prefix="mlflow-triton-") as tmp:
        plan = source.flavor.plan(source, publisher.config, Path(tmp))
    publish_prerequisites(publisher, plan, verify)
