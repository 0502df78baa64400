"""The audit trail in MLflow: tags on the registered model version that say where it serves.

Each rollout that records an outcome in the serving history (a publish, a ``sync``/``watch``
promotion, a rollback, a repair that finds a version serving) also tags the registered model
version it concerns, so the MLflow UI shows which version serves where, since when, and
whether it was verified or refused. Keys are per deployment (``triton.<deployment>.<field>``)::

    triton.fraud.state           serving | refused | replaced | rolled_back
    triton.fraud.since           2026-11-25T12:00:00Z (UTC, when the state began)
    triton.fraud.verified        true | false (smoke test before it served)
    triton.fraud.triton_version  3 (the version folder in the Triton repository)
    triton.fraud.via             publish | rollback | repair
    triton.fraud.target          triton:/dns+http://triton-headless:8000 (credentials masked)
    triton.fraud.repository      s3://models/triton
    triton.fraud.refused_at / refused_reason    the last refusal (Triton's or the smoke test's)
    triton.fraud.replaced_by     the registry version that serves instead

Tags never hold secrets: userinfo in every URI (``http://user:pass@host``) and the values of
query parameters that look like credentials are masked
(:func:`mlflow_triton.core.masking.mask_secrets`, the rule every output of the package follows).

Tags are best effort: the serving history in the repository is the record that rollouts and
rollbacks rely on. A tag that cannot be written (registry down, no permission, a model not
from the registry) logs a warning and never fails the rollout, nor delays it more than
:data:`TAG_TIMEOUT_S`.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

from mlflow_triton.core.masking import mask_secrets

logger = logging.getLogger(__name__)

TAG_PREFIX = "triton"
#: MLflow keeps tag values up to 5000 characters; a refusal reason is cut well below that.
MAX_REASON_CHARS = 1000
#: How long a rollout waits for its tags. MLflow's client retries an unreachable tracking
#: server for minutes; the tags then finish (or fail, with a warning) in the background.
TAG_TIMEOUT_S = 10.0
#: Tags written at once (one request each; the registry's store serializes its own writes).
TAG_WRITERS = 4


def tag_key(deployment: str, field: str) -> str:
    return f"{TAG_PREFIX}.{deployment}.{field}"


class AuditTrail:
    """Writes the audit tags of one deployment.

    Args:
        deployment: the Triton model name.
        target: where it serves (a target URI or the replica URLs); masked before use.
        repository: the repository URI; masked before use.
        client: an ``MlflowClient`` (default: one for the current tracking URI, made when
            first needed).
    """

    def __init__(self, deployment: str, target: str, repository: str, client: Any = None) -> None:
        self.deployment = deployment
        self.target = mask_secrets(target)
        self.repository = mask_secrets(repository)
        self._client = client

    def serving(self, entry: Mapping[str, Any], replaced: Mapping[str, Any] | None) -> None:
        """Tag the registry version of history ``entry`` (a ``serving`` event) as serving, and
        the registry version of ``replaced`` (the serving event before it) as replaced."""
        registered = _registered(entry)
        if registered is None:
            return
        verified = entry.get("verified")
        tags = [(registered, {
            "state": "serving", "since": entry.get("at"), "via": entry.get("via"),
            "verified": "unknown" if verified is None else str(bool(verified)).lower(),
            "triton_version": entry.get("version"), "target": self.target,
            "repository": self.repository,
        })]  # fmt: skip
        before = _registered(replaced) if replaced is not None else None
        if before is not None and before != registered:
            rolled_back = entry.get("via") == "rollback" and entry.get("rolled_back_from") == replaced.get("version")  # type: ignore[union-attr]
            tags.append((before, {
                "state": "rolled_back" if rolled_back else "replaced", "since": entry.get("at"),
                "replaced_by": f"registry version {registered[1]} (Triton version {entry.get('version')})",
            }))  # fmt: skip
        self._tag(tags)

    def refused(self, entry: Mapping[str, Any], serving: Mapping[str, Any] | None) -> None:
        """Tag the registry version of history ``entry`` (a ``refused`` event). If that
        registry version still serves (``serving``, the last serving event, names it: a
        republish with other settings was refused), only the refusal is recorded."""
        registered = _registered(entry)
        if registered is None:
            return
        values: dict[str, Any] = {
            "refused_at": entry.get("at"),
            "refused_reason": mask_secrets(str(entry.get("reason", "")))[:MAX_REASON_CHARS],
        }
        if serving is None or _registered(serving) != registered:
            values.update({
                "state": "refused", "since": entry.get("at"), "via": entry.get("via"),
                "verified": "false", "triton_version": entry.get("version"),
                "target": self.target, "repository": self.repository,
            })  # fmt: skip
        self._tag([(registered, values)])

    def _tag(self, tags: list[tuple[tuple[str, str], Mapping[str, Any]]]) -> None:
        """Write ``tags`` (registry version, values), :data:`TAG_WRITERS` calls at a time:
        MLflow sets one tag per request, and ten in series took 0.2-0.45 s after the switch."""
        calls = [(registered, field, value) for registered, values in tags for field, value in values.items() if value is not None]
        writer = threading.Thread(target=self._write, args=(calls,), daemon=True)
        writer.start()
        writer.join(TAG_TIMEOUT_S)
        if writer.is_alive():
            logger.warning(
                "Tagging registered model %r version %s is taking over %.0f s (is the tracking "
                "server reachable?); the rollout goes on, the tags follow in the background.",
                *tags[0][0], TAG_TIMEOUT_S,
            )  # fmt: skip

    def _write(self, calls: list[tuple[tuple[str, str], str, Any]]) -> None:
        try:
            if self._client is None:
                from mlflow import MlflowClient

                self._client = MlflowClient()
            with ThreadPoolExecutor(max_workers=TAG_WRITERS, thread_name_prefix="mlflow-triton-tags") as pool:
                errors = list(pool.map(lambda call: self._set(*call), calls))
        except Exception as err:
            errors = [err] * len(calls)
        failed: dict[tuple[str, str], Exception] = {}
        for (registered, _, _), err in zip(calls, errors, strict=True):
            if err is not None:
                failed.setdefault(registered, err)
        for (name, version), err in failed.items():  # best effort: the serving history is the record
            logger.warning(
                "Could not tag registered model %r version %s with where it serves (%s): %s. "
                "The rollout itself is not affected.", name, version, self.deployment, err,
            )  # fmt: skip

    def _set(self, registered: tuple[str, str], field: str, value: Any) -> Exception | None:
        name, version = registered
        try:
            self._client.set_model_version_tag(name, version, tag_key(self.deployment, field), str(value))
        except Exception as err:
            return err
        return None


def _registered(entry: Mapping[str, Any] | None) -> tuple[str, str] | None:
    if not entry or not entry.get("registered_model") or entry.get("registered_version") in (None, ""):
        return None
    return str(entry["registered_model"]), str(entry["registered_version"])
