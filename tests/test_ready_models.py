"""Integration: a round's readiness snapshot (``TritonCluster.ready_models``, one statistics call
per replica) lists exactly what each real replica has loaded, so a replica that lost the model
is the one asked and repaired."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from test_promotion_support import ALIAS, CPU, deployment, register  # noqa: F401 (fixture)

from mlflow_triton.fleet.server import TritonCluster, TritonServer
from mlflow_triton.promotion import load_spec, sync

pytestmark = pytest.mark.integration


def test_ready_models_follow_what_each_replica_has_loaded(stack, deployment):
    register(deployment, 21)
    MlflowClient().set_registered_model_alias(deployment, ALIAS, "1")
    spec = load_spec(models=[deployment], alias=ALIAS, config=CPU, smoke_test=False)
    assert sync(spec).ok
    first, second = stack.triton_urls
    cluster = TritonCluster(stack.triton_urls)
    ready = cluster.ready_models()
    assert (deployment, "1") in ready[first] and (deployment, "1") in ready[second]

    with TritonServer(second) as server:  # a restart in explicit mode loses the model
        server.unload_model(deployment)
    ready = cluster.ready_models()
    assert (deployment, "1") in ready[first] and (deployment, "1") not in ready[second]
    assert cluster.not_ready(deployment, 1, ready) == [second]
