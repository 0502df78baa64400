"""Verified before serving: clients never get an answer from a version that was refused.

Triton answers a request that names no version with the highest loaded version. The old
design pinned the new version, let Triton switch, and only then ran the smoke test: about
0.6% of client requests were answered by a version that was then refused. These tests hammer
a deployment with unversioned requests from several threads, on both replicas, through a
refused rollout and then an accepted one, and count who answered.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from models import sample
from test_promotion_support import (  # noqa: F401 (fixture)
    ALIAS,
    CPU,
    assert_every_replica_serves,
    deployment,
    local,
    register,
)

from mlflow_triton.fleet.server import TritonServer
from mlflow_triton.promotion import load_spec, rollback, sync
from mlflow_triton.rollout import verification

pytestmark = pytest.mark.integration
THREADS_PER_REPLICA = 2


class Hammer:
    """Unversioned requests from several threads per replica until stopped (bounded: 120 s).

    Each answer is attributed to the model whose local output it matches.
    """

    def __init__(self, urls: list[str], name: str, expected: dict[str, np.ndarray], x: np.ndarray) -> None:
        self.urls, self.name, self.expected, self.x = urls, name, expected, x
        self.seen = {key: 0 for key in [*expected, "other"]}
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(url,), daemon=True)
            for url in urls for _ in range(THREADS_PER_REPLICA)
        ]  # fmt: skip

    def _run(self, url: str) -> None:
        deadline = time.monotonic() + 120.0
        with TritonServer(url, timeout_s=10.0) as server:
            while not self._done.is_set() and time.monotonic() < deadline:
                try:
                    out = server.infer(self.name, {"features": self.x}, {"features": "FP32"}, ["scores"])["scores"]
                except Exception as err:  # counted, never raised: the assertion is on the count
                    with self._lock:
                        self.failures.append(f"{url}: {err}")
                    continue
                which = next(
                    (k for k, v in self.expected.items() if np.allclose(out, v, rtol=1e-4, atol=1e-5)), "other"
                )
                with self._lock:
                    self.seen[which] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.seen)

    def __enter__(self) -> "Hammer":
        for thread in self._threads:
            thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)
        self._done.set()
        for thread in self._threads:
            thread.join(30)


def refuse_every_candidate(monkeypatch) -> None:
    """The staged candidate answers the smoke test off by one, as a miscompiled backend would:
    whatever the reference (a fresh local run, or the outputs stored when the version was first
    verified, which a rollback uses), it disagrees. Clients' requests are not touched."""
    original = verification.SmokeTest._infer

    def off_by_one(*args, **kwargs):
        return {k: v + 1.0 for k, v in original(*args, **kwargs).items()}

    monkeypatch.setattr(verification.SmokeTest, "_infer", staticmethod(off_by_one))


def test_refused_sync_never_answers_and_accepted_sync_has_no_failures(
    stack, deployment, monkeypatch, record_property
):
    v1, v2, v3 = register(deployment, 21, 22, 23)
    registry = MlflowClient()
    spec = load_spec(models=[deployment], alias=ALIAS, config=CPU)
    registry.set_registered_model_alias(deployment, ALIAS, "1")
    assert sync(spec).ok
    x = sample(2, seed=41)
    expected = {"v1": local(v1, x), "v2": local(v2, x), "v3": local(v3, x)}

    with Hammer(stack.triton_urls, deployment, expected, x) as hammer:
        with monkeypatch.context() as patch:
            refuse_every_candidate(patch)
            registry.set_registered_model_alias(deployment, ALIAS, "2")
            refused = sync(spec).models[0]
        during_refusal = hammer.snapshot()
        registry.set_registered_model_alias(deployment, ALIAS, "3")
        accepted = sync(spec).models[0]

    summary = (
        f"refused rollout: {sum(during_refusal.values())} answers {during_refusal}; whole run: "
        f"{sum(hammer.seen.values())} answers {hammer.seen}, {len(hammer.failures)} failed"
    )
    print(summary)
    record_property("answers_from_refused_version", hammer.seen["v2"])
    record_property("failed_requests", len(hammer.failures))
    assert refused.action == "failed" and "failed verification" in refused.error, refused.to_dict()
    assert accepted.action == "published", accepted.to_dict()
    assert hammer.failures == [], hammer.failures[:5]
    assert hammer.seen["v2"] == 0 and hammer.seen["other"] == 0, summary
    assert during_refusal["v1"] > 0 and hammer.seen["v3"] > 0, summary
    assert_every_replica_serves(stack.triton_urls, deployment, v3)
    events = get_deploy_client("triton:/" + ",".join(stack.triton_urls)).get_deployment(deployment)["history"]
    outcomes = [(e["event"], e["version"]) for e in events if e["event"] != "staged"]
    assert outcomes == [("serving", 1), ("refused", 2), ("serving", 3)], events
    assert all(e["verified"] for e in events if e["event"] == "serving")


def test_refused_plugin_update_and_rollback_are_never_seen(stack, unique_name, monkeypatch):
    """The same guarantee on the other paths that make a version serve: the MLflow plugin's
    update (verification on by default) and rollback."""
    client = get_deploy_client("triton:/" + ",".join(stack.triton_urls))
    v1, v2 = register(unique_name, 24, 25)
    x = sample(2, seed=42)
    expected = {"v1": local(v1, x), "v2": local(v2, x)}
    client.create_deployment(unique_name, f"models:/{unique_name}/1", config=CPU)
    try:
        with Hammer(stack.triton_urls, unique_name, expected, x) as hammer:
            with monkeypatch.context() as patch:
                refuse_every_candidate(patch)
                with pytest.raises(MlflowException) as refused:
                    client.update_deployment(unique_name, f"models:/{unique_name}/2", config=CPU)
            client.update_deployment(unique_name, f"models:/{unique_name}/2", config=CPU)
            time.sleep(1.0)  # requests in flight at the switch may still be answered by v1
            after_update = hammer.snapshot()
            with monkeypatch.context() as patch:
                refuse_every_candidate(patch)
                with pytest.raises(MlflowException) as refused_rollback:
                    rollback(load_spec(require_models=False, config=CPU), unique_name)
        assert refused.value.error_code == "INTERNAL_ERROR"
        assert refused_rollback.value.error_code == "INTERNAL_ERROR"
        served = hammer.snapshot()
        # v1 serves, then v2 (accepted); the refused rollback to v1 is never seen after v2.
        assert hammer.failures == [] and served["other"] == 0, (served, hammer.failures[:5])
        assert after_update["v1"] > 0 and served["v2"] > after_update["v2"] > 0, served
        assert served["v1"] == after_update["v1"], (after_update, served)
        state = client.get_deployment(unique_name)
        assert state["serving_version"] == 3  # repository version 2 was refused
        assert_every_replica_serves(stack.triton_urls, unique_name, v2)
        assert [(e["event"], e["version"]) for e in state["history"] if e["event"] != "staged"] == [
            ("serving", 1), ("refused", 2), ("serving", 3), ("refused", 1),
        ]  # fmt: skip
    finally:
        client.delete_deployment(unique_name)
