"""Crash consistency: a publisher killed with SIGKILL at any step is repaired by the next sync.

Each case runs a real ``mlflow_triton.promotion.sync`` in a child process that kills itself
(SIGKILL: no ``finally``, no lease release) right after one step of the rollout of registry
version 3 (versions 1 and 2 published before; version 2 serves):

* ``after_lease``: the lease is taken, nothing else;
* ``mid_upload``: the model file is in the staging folder, ``NAME/3/`` holds only its claim;
* ``mid_build``: the staging model loads while ``NAME/3/`` is built from the staging folder:
  its model file is there, its provenance is not;
* ``after_staged_record``: verified, and recorded as ``staged``, but config.pbtxt still pins 2
  (the next sync reuses the upload: nothing is uploaded again);
* ``after_config_write``: config.pbtxt pins the new version, no replica loaded it;
* ``after_load_on_replica_1``: replica 1 of 2 serves the new version, replica 2 the old one;
* ``during_prune``: version 1's provenance is deleted, its model file is not.

Then the next ``sync`` (another process would do the same) must leave: every replica serving
one verified version, the alias's; a repository that is not torn (each version folder has its
model and provenance; no staging model; no lease); no more versions than ``keep_versions``.
The lease TTL is 5 s here (``-C lease_ttl``; 30 s by default), so recovery takes seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from mlflow import MlflowClient
from models import sample
from test_promotion_support import ALIAS, CPU, local, logged_model

from mlflow_triton.fleet.server import TritonServer
from mlflow_triton.promotion import load_spec, sync
from mlflow_triton.repository.history import ServingHistory
from mlflow_triton.repository.layout import LEASE_FILE, PROVENANCE_FILE, staging_name
from mlflow_triton.rollout.publisher import ModelPublisher
from mlflow_triton.settings.deployment import DeploymentConfig

pytestmark = pytest.mark.integration
#: 5 s keeps CI fast; CRASH_TEST_LEASE_TTL=30 measures recovery with the default TTL.
LEASE_TTL_S = int(os.environ.get("CRASH_TEST_LEASE_TTL", "5"))
CONFIG = {**CPU, "lease_ttl": str(LEASE_TTL_S), "keep_versions": "2"}
SEEDS = (31, 32, 33)

#: Code the child runs: patch one step so that the process SIGKILLs itself right after it.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from mlflow_triton.repository import lease
    from mlflow_triton.repository import s3_store
    from mlflow_triton.promotion import load_spec, sync
    from mlflow_triton.fleet.server import TritonCluster

    registered, deployment, point, ttl = sys.argv[1:5]

    def die():
        sys.stdout.write(f"killed at {point}\\n"); sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def after(owner, method, when=lambda *a, **k: True, change=None):
        original = getattr(owner, method)
        def patched(self, *args, **kwargs):
            hit = when(*args, **kwargs)
            if hit and change:
                args, kwargs = change(self, *args, **kwargs)
            result = original(self, *args, **kwargs)
            if hit:
                die()
            return result
        setattr(owner, method, patched)

    if point == "after_lease":
        after(lease.Lease, "acquire")
    elif point == "mid_upload":
        after(s3_store.S3Store, "copy_from")
    elif point == "mid_build":
        after(s3_store.S3Store, "copy_prefix", when=lambda source, target: target.startswith(f"{deployment}/3/"))
    elif point == "after_staged_record":  # history says "staged", config.pbtxt not yet written
        from mlflow_triton.repository import history
        save = history.ServingHistory.save
        def save_then_die(self, store_):
            save(self, store_)
            if self.events and self.events[-1]["event"] == "staged":
                die()
        history.ServingHistory.save = save_then_die
    elif point == "after_config_write":
        after(s3_store.S3Store, "write_bytes", when=lambda key, data: key == f"{deployment}/config.pbtxt")
    elif point == "after_load_on_replica_1":
        after(
            TritonCluster, "load_model", when=lambda name, *a, **k: name == deployment,
            change=lambda self, name, version=None, urls=None: ((name, version, self.urls[:1]), {}),
        )
    elif point == "during_prune":
        after(s3_store.S3Store, "delete", when=lambda key: key.endswith("/1/mlflow-triton.json"))
    spec = load_spec(
        models=[f"{registered}={deployment}"], alias="%(alias)s",
        config={"instance_kind": "cpu", "lease_ttl": ttl, "keep_versions": "2"},
    )
    report = sync(spec)
    print("not killed:", report.to_dict())
    sys.exit(3)
    """
    % {"alias": ALIAS}
)
KILL_POINTS = [
    "after_lease", "mid_upload", "mid_build", "after_staged_record", "after_config_write", "after_load_on_replica_1",
    "during_prune",
]  # fmt: skip


@pytest.fixture(scope="module")
def registered(stack) -> str:
    """One registered model with three versions, shared by the cases (run one after another)."""
    import mlflow

    name = f"crash-{os.getpid()}"
    for seed in SEEDS:
        mlflow.register_model(logged_model(seed), name)
    return name


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sync_repairs_a_publisher_killed_at_each_step(stack, registered, unique_name, point, record_property):
    from models import Scorer

    deployment = unique_name
    registry = MlflowClient()
    spec = load_spec(models=[f"{registered}={deployment}"], alias=ALIAS, config=CONFIG)
    publisher = ModelPublisher.for_config(DeploymentConfig.from_dict(CONFIG), stack.triton_urls)
    try:
        for version in ("1", "2"):
            registry.set_registered_model_alias(registered, ALIAS, version)
            assert sync(spec).ok
        registry.set_registered_model_alias(registered, ALIAS, "3")

        child = subprocess.run(
            [sys.executable, "-c", CHILD, registered, deployment, point, str(LEASE_TTL_S)],
            capture_output=True, text=True, timeout=240, env=dict(os.environ),
        )  # fmt: skip
        killed_at = time.monotonic()
        assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr[-3000:]
        assert f"killed at {point}" in child.stdout
        assert publisher.store.read_bytes(f"{deployment}/{LEASE_FILE}") is not None  # left behind

        report = sync(spec)
        recovery_s = time.monotonic() - killed_at
        print(f"{point}: kill -> successful sync in {recovery_s:.1f}s ({report.models[0].describe()})")
        record_property("recovery_seconds", round(recovery_s, 1))
        assert report.ok, report.to_dict()
        assert_consistent(stack, publisher, deployment, expected_registry_version="3", model=Scorer(seed=SEEDS[2]))
        assert recovery_s < LEASE_TTL_S + 60
    finally:
        publisher.delete(deployment)


def assert_consistent(stack, publisher: ModelPublisher, name: str, expected_registry_version: str, model) -> None:
    state = publisher.read_state(name)
    serving = state.serving_version
    # One verified version serves, the alias's.
    assert state.provenance.registered_version == expected_registry_version, state.provenance
    history = ServingHistory.load(publisher.store, name)
    last = [e for e in history.events if e["event"] == "serving"][-1]
    assert (last["version"], last["verified"]) == (serving, True), history.events
    x = sample(3, seed=7)
    for url in stack.triton_urls:
        with TritonServer(url) as server:
            ready = [v for v in state.versions if server.is_model_ready(name, v)]
            assert ready == [serving], (url, ready, state.versions)
            out = server.infer(name, {"features": x}, {"features": "FP32"}, ["scores"])["scores"]
        np.testing.assert_allclose(out, local(model, x), rtol=1e-4, atol=1e-5, err_msg=url)
    # The repository is not torn: every version complete, no staging model, no lease.
    for version in state.versions:
        _, files = publisher.store.list_dir(f"{name}/{version}/")
        assert {PROVENANCE_FILE, "model.onnx"} <= set(files), (version, files)
    assert publisher.store.list_dir(f"{staging_name(name)}/") == ([], [])
    assert publisher.store.read_bytes(f"{name}/{LEASE_FILE}") is None
    # No stray versions beyond keep_versions.
    assert len(state.versions) <= 2 and serving in state.versions, state.versions
