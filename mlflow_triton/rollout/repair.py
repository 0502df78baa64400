"""Repair and upkeep of one deployment, always under its lease.

What a dead or interrupted publisher can leave, and what each publish, ``sync`` and ``repair``
put right before going on:

* a staging model (in the repository, or still loaded on a replica): unloaded and deleted;
* version folders without their provenance file (an interrupted upload or prune: provenance is
  written last and deleted first): deleted;
* a version ``config.pbtxt`` pins that the history does not record as serving (killed between
  the config write and the history write): recorded;
* replicas that lack the pinned version (a restart in explicit model-control mode, a switch
  interrupted half-way): it is loaded there, verified under the staging name first;
* versions beyond ``keep_versions``, and versions that never served: pruned, never the serving
  version nor the previous good one (the rollback target).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mlflow_triton.fleet.errors import raise_failures
from mlflow_triton.repository.history import ServingHistory
from mlflow_triton.repository.layout import PROVENANCE_FILE, version_prefix, warmup_prefix
from mlflow_triton.repository.provenance import provenance_key
from mlflow_triton.repository.state import DeploymentState
from mlflow_triton.repository.store import ModelRepositoryStore

if TYPE_CHECKING:
    from mlflow_triton.rollout.publisher import ModelPublisher
    from mlflow_triton.rollout.switch import Rollout
    from mlflow_triton.rollout.verification import Verifier

logger = logging.getLogger(__name__)


def delete_version(store: ModelRepositoryStore, name: str, version: int) -> None:
    """Delete one version folder, its provenance first: interrupted half-way, it leaves a folder
    every publisher recognizes as incomplete and removes."""
    store.delete(provenance_key(name, version))
    store.delete_prefix(version_prefix(name, version))
    store.delete_prefix(warmup_prefix(name, version))


def never_served(state: DeploymentState, history: ServingHistory) -> list[int]:
    """Version folders newer than the serving version that never served, newest first: an
    upload that could not be verified, or one refused before its folder could be removed."""
    served = history.served()
    return sorted((v for v in state.versions if v > (state.serving_version or 0) and v not in served), reverse=True)


def previous_good(state: DeploymentState, history: ServingHistory) -> int | None:
    """The version ``rollback`` goes to by default and ``prune`` always keeps: the previous
    serving version that was neither refused when published nor rolled back from (see
    :meth:`ServingHistory.previous_good`). For versions published before the history existed,
    the newest older version still in the repository."""
    found = history.previous_good(state.serving_version, state.versions)
    if found is not None or state.serving_version is None:
        return found
    recorded = history.served() | history.refused(via="publish") | history.rolled_back_from()
    older = [v for v in state.versions if v < state.serving_version and v not in recorded]
    return max(older) if older else None


def remove_leftovers(publisher: "ModelPublisher", state: DeploymentState, rollout: "Rollout") -> list[int]:
    """Remove what an interrupted publisher left and record a pinned version the history
    misses; returns the version folders removed. ``state.versions`` keeps their numbers, so a
    new version number is never one a dead publisher used."""
    if rollout.staging_left_over():
        logger.warning("Removing the staging model left by an interrupted rollout of %s", state.name)
        rollout.clean_staging()
    removed = []
    for version in state.versions:
        if version == state.serving_version:
            continue
        if PROVENANCE_FILE not in publisher.store.list_dir(version_prefix(state.name, version))[1]:
            rollout.lease.check("removing leftovers")
            logger.warning("Removing %s version %d left incomplete by an interrupted publish", state.name, version)
            delete_version(publisher.store, state.name, version)
            removed.append(version)
    serving = state.serving_version
    if serving is not None and state.exists and serving not in rollout.history.served():
        # Pinned, so it passed staging; the history lost the end of that rollout (or predates it).
        provenance = state.provenance
        rollout.record_serving(
            serving, "repair", rollout.history.staged_verified(serving),
            registered_model=provenance.registered_model if provenance else None,
            registered_version=provenance.registered_version if provenance else None,
        )  # fmt: skip
    return removed


def reload_missing(
    publisher: "ModelPublisher", state: DeploymentState, rollout: "Rollout", verify: "Verifier | None"
) -> list[str]:
    """Replicas that lack the serving version load it again, verified under the staging name
    first; returns their URLs."""
    version = state.serving_version
    assert version is not None and state.provenance is not None
    missing = publisher.cluster.not_ready(state.name, version)
    if not missing:
        return []
    rollout.verify(version, state.config, state.provenance, verify, urls=missing)
    rollout.lease.check("reloading replicas")
    raise_failures(f"load {state.name!r} version {version}", publisher.cluster.load_model(state.name, version, missing))
    logger.info("Reloaded %s version %d on %s", state.name, version, ", ".join(missing))
    return missing


def prune(publisher: "ModelPublisher", name: str, serving: int, rollout: "Rollout") -> list[int]:
    """Delete versions that never served, and the oldest others so that ``keep_versions``
    remain; never the serving version nor the previous good one."""
    state = publisher.read_state(name)
    protected = {serving, previous_good(state, rollout.history)} - {None}
    unserved = never_served(state, rollout.history)
    others = sorted((v for v in state.versions if v not in protected and v not in unserved), reverse=True)
    doomed = sorted(unserved + others[max(0, publisher.config.keep_versions - len(protected)) :])
    for version in doomed:
        rollout.lease.check("prune")
        delete_version(publisher.store, name, version)
    if doomed:
        logger.info("Pruned %s versions %s", name, doomed)
    return doomed
