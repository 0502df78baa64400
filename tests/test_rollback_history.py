"""Serving history and rollback on the real stack.

``rollback`` goes to the previous known-good version, as the history records it: never a
version that was refused, nor one that was rolled back from; ``prune`` never deletes that
version, whatever ``keep_versions`` says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from test_promotion_support import CPU, assert_every_replica_serves, register

from mlflow_triton.cli import cli
from mlflow_triton.promotion import load_spec, rollback
from mlflow_triton.repository.stores import open_store
from mlflow_triton.rollout import verification

pytestmark = pytest.mark.integration


def deploy_client(stack):
    return get_deploy_client("triton:/" + ",".join(stack.triton_urls))


def versions_kept(stack, name: str) -> list[int]:
    folders, _ = open_store(stack.model_repository, stack.s3_endpoint).list_dir(f"{name}/")
    return sorted(int(f) for f in folders if f.isdigit())


def timeline(history: list[dict]) -> list[tuple]:
    """(event, version, via, rolled_back_from) of each outcome, oldest first (each switch also
    writes a ``staged`` event before its config write: checked once, then left out)."""
    for index, event in enumerate(history):
        if event["event"] == "serving" and event["via"] != "repair":
            before = history[index - 1] if index else {}
            assert (before.get("event"), before.get("version")) == ("staged", event["version"]), history
    return [(e["event"], e["version"], e["via"], e.get("rolled_back_from")) for e in history if e["event"] != "staged"]


def cli_rollback(name: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["rollback", name, "-C", "instance_kind=cpu", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_rollback_publish_rollback_never_returns_to_a_rolled_back_version(stack, unique_name):
    a, b, c = register(unique_name, 61, 62, 63)
    client = deploy_client(stack)
    try:
        client.create_deployment(unique_name, f"models:/{unique_name}/1", config=CPU)
        client.update_deployment(unique_name, f"models:/{unique_name}/2", config=CPU)
        assert_every_replica_serves(stack.triton_urls, unique_name, b)
        assert client.get_deployment(unique_name)["rollback_target"] == 1

        output = cli_rollback(unique_name)

        assert f"{unique_name}: rolled back from version 2 to 1" in output
        assert_every_replica_serves(stack.triton_urls, unique_name, a)
        described = client.get_deployment(unique_name)
        assert described["serving_version"] == 1
        assert described["rollback_target"] is None  # 2 was rolled back from: not a target
        assert versions_kept(stack, unique_name) == [1, 2]

        third = client.update_deployment(unique_name, f"models:/{unique_name}/3", config=CPU)

        assert third["version"] == 3 and third["previous_version"] == 1, third
        assert third["pruned_versions"] == [2]  # keep_versions=2: serving 3 + last known-good 1
        assert versions_kept(stack, unique_name) == [1, 3]
        assert_every_replica_serves(stack.triton_urls, unique_name, c)
        assert client.get_deployment(unique_name)["rollback_target"] == 1

        # Python API this time: same code path as the CLI.
        result = rollback(load_spec(require_models=False, config=CPU), unique_name)

        assert (result.version, result.previous_version, result.changed) == (1, 3, True)
        assert (result.registered_model, result.registered_version) == (unique_name, "1")
        assert_every_replica_serves(stack.triton_urls, unique_name, a)
        described = client.get_deployment(unique_name)
        assert described["serving_version"] == 1 and described["versions"] == [1, 3]
        assert timeline(described["history"]) == [
            ("serving", 1, "publish", None),
            ("serving", 2, "publish", None),
            ("serving", 1, "rollback", 2),
            ("serving", 3, "publish", None),
            ("serving", 1, "rollback", 3),
        ]
        assert all(e["verified"] is True for e in described["history"]), described["history"]
        outcomes = [e for e in described["history"] if e["event"] != "staged"]
        assert [e.get("previous") for e in outcomes] == [None, 1, 2, 1, 3]
        assert [e.get("registered_version") for e in outcomes] == ["1", "2", "1", "3", "1"]
        # Every other kept version was rolled back from: nothing to go back to by default.
        assert described["rollback_target"] is None
        refused = CliRunner().invoke(cli, ["rollback", unique_name, "-C", "instance_kind=cpu"])
        assert refused.exit_code == 1 and "no earlier known-good version" in refused.output, refused.output
        assert_every_replica_serves(stack.triton_urls, unique_name, a)
    finally:
        client.delete_deployment(unique_name)


def test_a_refused_version_is_never_a_rollback_target(stack, unique_name, monkeypatch):
    a, b, _ = register(unique_name, 64, 65, 66)
    client = deploy_client(stack)
    try:
        client.create_deployment(unique_name, f"models:/{unique_name}/1", config=CPU)
        client.update_deployment(unique_name, f"models:/{unique_name}/2", config=CPU)
        original = verification.SmokeTest._run_locally

        def off_by_one(self, *args, **kwargs):  # the local reference disagrees with Triton
            return {k: v + 1.0 for k, v in original(self, *args, **kwargs).items()}

        monkeypatch.setattr(verification.SmokeTest, "_run_locally", off_by_one)
        with pytest.raises(MlflowException, match="version 3 was rejected") as err:
            client.update_deployment(unique_name, f"models:/{unique_name}/3", config=CPU)
        assert "repository still serves version 2" in err.value.message
        monkeypatch.undo()

        described = client.get_deployment(unique_name)
        assert described["serving_version"] == 2 and described["versions"] == [1, 2]
        assert versions_kept(stack, unique_name) == [1, 2]  # version 3's folder is gone
        assert timeline(described["history"]) == [
            ("serving", 1, "publish", None),
            ("serving", 2, "publish", None),
            ("refused", 3, "publish", None),
        ]
        assert "differs from the local onnx run" in described["history"][-1]["reason"]
        assert described["rollback_target"] == 1
        assert_every_replica_serves(stack.triton_urls, unique_name, b)
        # The refused version cannot be asked for explicitly either.
        explicit = CliRunner().invoke(cli, ["rollback", unique_name, "--to", "3", "-C", "instance_kind=cpu"])
        assert explicit.exit_code == 1 and "was refused" in explicit.output, explicit.output

        output = cli_rollback(unique_name)

        assert f"{unique_name}: rolled back from version 2 to 1" in output
        assert_every_replica_serves(stack.triton_urls, unique_name, a)
        described = client.get_deployment(unique_name)
        assert described["serving_version"] == 1
        assert timeline(described["history"])[-1] == ("serving", 1, "rollback", 2)
        assert described["rollback_target"] is None  # 3 refused, 2 rolled back from

        # The next version number is never a refused one's.
        fourth = client.update_deployment(unique_name, f"models:/{unique_name}/2", config=CPU)
        assert fourth["changed"] is True and fourth["version"] == 4, fourth
    finally:
        client.delete_deployment(unique_name)


def test_prune_keeps_the_last_known_good_even_with_keep_versions_1(stack, unique_name):
    a, b, c = register(unique_name, 67, 68, 69)
    client = deploy_client(stack)
    keep_one = {**CPU, "keep_versions": 1}
    try:
        client.create_deployment(unique_name, f"models:/{unique_name}/1", config=CPU)

        second = client.update_deployment(unique_name, f"models:/{unique_name}/2", config=keep_one)

        assert second["version"] == 2 and second["pruned_versions"] == [], second
        assert versions_kept(stack, unique_name) == [1, 2]  # 1 is the rollback target
        assert client.get_deployment(unique_name)["rollback_target"] == 1

        third = client.update_deployment(unique_name, f"models:/{unique_name}/3", config=keep_one)

        assert third["version"] == 3 and third["pruned_versions"] == [1], third
        assert versions_kept(stack, unique_name) == [2, 3]
        described = client.get_deployment(unique_name)
        assert described["serving_version"] == 3 and described["rollback_target"] == 2
        assert_every_replica_serves(stack.triton_urls, unique_name, c)

        output = cli_rollback(unique_name)

        assert f"{unique_name}: rolled back from version 3 to 2" in output
        assert_every_replica_serves(stack.triton_urls, unique_name, b)
    finally:
        client.delete_deployment(unique_name)


class SixFeatures(torch.nn.Module):
    """A later model generation: same tensor names, one more input feature block (batch, 6)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(70)
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


def log_six_features(tmp: Path, registered_name: str) -> None:
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    model = SixFeatures().eval()
    x = np.random.default_rng(3).normal(size=(5, 6)).astype(np.float32)
    path = tmp / "six.onnx"
    torch.onnx.export(
        model, (torch.from_numpy(x[:2]),), str(path), input_names=["features"], output_names=["scores"],
        dynamic_axes={"features": {0: "batch"}, "scores": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    with mlflow.start_run():
        mlflow.onnx.log_model(
            onnx.load(str(path)), name="model", signature=infer_signature({"features": x}, {"scores": y}),
            input_example={"features": x}, registered_model_name=registered_name,
        )  # fmt: skip


def test_rollback_of_an_alias_deployment_verifies_with_the_published_versions_example(
    stack, unique_name, tmp_path
):
    (a,) = register(unique_name, 64)
    log_six_features(tmp_path, unique_name)  # registry version 2: (batch, 6) inputs
    registry = MlflowClient()
    registry.set_registered_model_alias(unique_name, "production", "1")
    client = deploy_client(stack)
    try:
        client.create_deployment(unique_name, f"models:/{unique_name}@production", config=CPU)
        registry.set_registered_model_alias(unique_name, "production", "2")
        second = client.update_deployment(unique_name, f"models:/{unique_name}@production", config=CPU)
        assert second["version"] == 2, second

        output = cli_rollback(unique_name)  # verification of repository version 1 (4 features)

        assert f"{unique_name}: rolled back from version 2 to 1" in output
        assert_every_replica_serves(stack.triton_urls, unique_name, a)
    finally:
        client.delete_deployment(unique_name)
