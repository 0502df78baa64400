"""Unit tests of the publisher's bookkeeping on a local repository (no servers)."""

from __future__ import annotations

import json

from mlflow_triton.fleet.server import TritonCluster
from mlflow_triton.repository.history import ServingHistory
from mlflow_triton.repository.layout import CLAIM_FILE
from mlflow_triton.repository.local_store import LocalStore
from mlflow_triton.repository.state import read_state
from mlflow_triton.rollout.publisher import ModelPublisher
from mlflow_triton.rollout.repair import never_served, previous_good
from mlflow_triton.rollout.transaction import claim_version
from mlflow_triton.settings.deployment import DeploymentConfig


def publisher(tmp_path) -> ModelPublisher:
    store = LocalStore(tmp_path)
    return ModelPublisher(store, TritonCluster(["http://127.0.0.1:9"]), DeploymentConfig(model_repository=str(tmp_path)))


def test_a_version_number_is_claimed_once(tmp_path):
    """A publisher that lost its lease mid-upload holds a claim on its number: the publisher
    that took over cannot pick it, even before the zombie's first byte is visible."""
    pub = publisher(tmp_path)
    zombie = claim_version(pub.store, "m", 3)
    taker = claim_version(pub.store, "m", 3)
    assert (zombie, taker) == (3, 4)
    assert pub.store.list_dir("m/3/") == ([], [CLAIM_FILE])
    assert read_state(pub.store, "m").versions == [3, 4]  # both folders visible to the next one


def test_never_served_and_previous_good_for_a_repository_without_history(tmp_path):
    pub = publisher(tmp_path)
    for version in (1, 2, 3, 4):
        pub.store.write_bytes(f"m/{version}/mlflow-triton.json", json.dumps({"name": "m", "version": version}).encode())
    pub.store.write_bytes("m/config.pbtxt", b'name: "m" version_policy { specific { versions: 3 } }')
    state, empty = read_state(pub.store, "m"), ServingHistory("m")
    assert state.serving_version == 3
    assert never_served(state, empty) == [4]
    assert previous_good(state, empty) == 2  # published before the history existed
    refused = ServingHistory("m")
    refused.record("refused", 2, "publish", reason="x")
    assert previous_good(state, refused) == 1
