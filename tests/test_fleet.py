"""A fleet on the real stack: three tritonserver replicas behind one name.

The replicas bind to 127.0.0.2, 127.0.0.3 and 127.0.0.4 on the same ports, as pods behind a
Kubernetes headless Service, and read their own prefix of the shared stack's S3 server. The
name ``triton-fleet.test`` resolves to them through the injectable resolver
(:func:`mlflow_triton.fleet.discovery.set_resolver`): the machine's DNS configuration is untouched.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.deployments.cli import commands as deployments_cli
from models import sample
from test_promotion_support import ALIAS, CPU, local, register

from mlflow_triton.fleet.discovery import dns_resolver, set_resolver
from mlflow_triton.fleet.errors import TritonError
from mlflow_triton.fleet.server import TritonServer
from mlflow_triton.local.processes import free_port
from mlflow_triton.local.servers import make_backend_dir, tritonserver
from mlflow_triton.local.stack import AWS_TEST_CREDENTIALS
from mlflow_triton.plugin.client import TritonDeploymentClient
from mlflow_triton.promotion import sync, watch
from mlflow_triton.promotion.spec import PromotionSpec

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

FLEET_NAME = "triton-fleet.test"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


class Fleet:
    """Three replicas on HOSTS, one HTTP port, one gRPC port, one repository prefix."""

    def __init__(self, stack, workdir: Path) -> None:
        self.stack = stack
        self.workdir = workdir
        self.prefix = f"fleet-{uuid.uuid4().hex[:8]}"
        self.repository = f"s3://{stack.bucket}/{self.prefix}"
        self.http_port = free_port(*HOSTS)
        self.grpc_port = free_port(*HOSTS)
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port(*HOSTS)
        self.backend_dir = make_backend_dir(workdir / "backends")
        self.replicas = [self.replica(i) for i in range(len(HOSTS))]

    @property
    def target(self) -> str:
        return f"triton:/dns+http://{FLEET_NAME}:{self.http_port}"

    @property
    def urls(self) -> list[str]:
        return [f"http://{host}:{self.http_port}" for host in HOSTS]

    def replica(self, index: int, *extra_args: str):
        process = tritonserver(
            f"s3://{self.stack.s3_endpoint}/{self.stack.bucket}/{self.prefix}", self.backend_dir,
            self.workdir / f"tritonserver-{HOSTS[index]}.log",
            {"MLFLOW_DISABLE_TELEMETRY": "true", **os.environ, **AWS_TEST_CREDENTIALS},
            http_port=self.http_port, grpc_port=self.grpc_port, host=HOSTS[index], extra_args=extra_args,
        )  # fmt: skip
        process.name = f"tritonserver-{HOSTS[index]}"
        return process

    def kill(self, index: int) -> None:
        """SIGKILL the replica by its pid, as a crashed pod."""
        process = self.replicas[index].process
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)

    def start(self, index: int, *extra_args: str) -> float:
        """Start replica ``index`` again (a fresh, empty process); returns when it went live."""
        self.replicas[index] = self.replica(index, *extra_args)
        self.replicas[index].start(180.0)
        return time.monotonic()

    def spec(self, deployment: str) -> PromotionSpec:
        return PromotionSpec.from_dict({
            "alias": ALIAS, "triton": f"dns+http://{FLEET_NAME}:{self.http_port}",
            "repository": self.repository, "config": CPU,
            "models": [{"registered_model": deployment}],
        })  # fmt: skip


@pytest.fixture(scope="module")
def fleet(stack):
    workdir = Path(tempfile.mkdtemp(prefix="fleet-", dir=stack.workdir))
    fleet = Fleet(stack, workdir)
    stack.s3_client().put_object(Bucket=stack.bucket, Key=f"{fleet.prefix}/", Body=b"")
    previous = set_resolver(lambda host, port: list(HOSTS) if host == FLEET_NAME else dns_resolver(host, port))
    try:
        for process in fleet.replicas:
            process.launch()
        for process in fleet.replicas:
            process.wait_healthy(180.0)
        yield fleet
    finally:
        set_resolver(previous)
        with ThreadPoolExecutor(len(fleet.replicas)) as pool:  # each waits for its own exit
            list(pool.map(lambda process: process.stop(), fleet.replicas))


def ready_on(url: str, name: str, version: int) -> bool:
    with TritonServer(url) as server:
        return server.is_model_ready(name, version)


def tags_of(name: str, version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(name, version).tags


def test_discovery_list_get_predict_from_the_target_alone_and_audit_tags(fleet, unique_name, monkeypatch):
    name = unique_name
    (model,) = register(name, 21)
    monkeypatch.delenv("TRITON_MODEL_REPO", raising=False)

    client = TritonDeploymentClient(fleet.target)
    created = client.create_deployment(name, f"models:/{name}/1", config={"model_repository": fleet.repository, **CPU})
    assert sorted(created["replicas"]) == fleet.urls  # every address behind the name
    assert all(ready_on(url, name, 1) for url in fleet.urls)

    # Same client after create: list and get read the repository it was given.
    listed = {d["name"]: d for d in client.list_deployments()}
    assert listed[name]["source"] == "repository" and listed[name]["registered_version"] == "1"
    described = client.get_deployment(name)
    assert described["provenance"]["registered_version"] == "1" and described["history"]
    assert {url: s["versions"] for url, s in described["servers"].items()} == {url: {"1": "READY"} for url in fleet.urls}

    # The target alone: Triton's repository index and model config.
    alone = TritonDeploymentClient(fleet.target)
    entry = {d["name"]: d for d in alone.list_deployments()}[name]
    assert entry["source"] == "triton" and entry["serving_version"] == 1 and sorted(entry["servers"]) == fleet.urls
    seen = alone.get_deployment(name)
    assert seen["source"] == "triton" and seen["config"]["backend"] == "onnxruntime"
    assert all(s["versions"] == {"1": "READY"} for s in seen["servers"].values())
    x = sample(3, seed=5)
    out = alone.predict(name, {"features": x})["predictions"]["scores"]
    np.testing.assert_allclose(np.asarray(out), local(model, x), rtol=1e-4, atol=1e-5)
    over_grpc = TritonDeploymentClient(f"triton:/dns+grpc://{FLEET_NAME}:{fleet.grpc_port}").get_deployment(name)
    assert sorted(over_grpc["servers"]) == [f"grpc://{host}:{fleet.grpc_port}" for host in HOSTS]
    assert over_grpc["serving_version"] == 1 and over_grpc["config"]["backend"] == "onnxruntime"
    # MLflow's own CLI (in-process, so the injected resolver applies): list/get take no -C.
    listed_cli = CliRunner().invoke(deployments_cli, ["list", "-t", fleet.target])
    assert listed_cli.exit_code == 0 and name in listed_cli.output, listed_cli.output
    got_cli = CliRunner().invoke(deployments_cli, ["get", "-t", fleet.target, "--name", name])
    assert got_cli.exit_code == 0 and "READY" in got_cli.output and "onnxruntime" in got_cli.output, got_cli.output
    # With ?repository= the same target adds provenance and history.
    queried = TritonDeploymentClient(f"{fleet.target}?repository={fleet.repository}").get_deployment(name)
    assert queried["source"] == "repository" and queried["history"][-1]["event"] == "serving"

    # A model Triton failed to load: `get` shows Triton's reason on the replica that tried.
    s3 = fleet.stack.s3_client()
    broken = f"{name}-broken"
    s3.put_object(Bucket=fleet.stack.bucket, Key=f"{fleet.prefix}/{broken}/config.pbtxt",
                  Body=f'name: "{broken}"\nbackend: "no_such_backend"\n'.encode())  # fmt: skip
    s3.put_object(Bucket=fleet.stack.bucket, Key=f"{fleet.prefix}/{broken}/1/model.bin", Body=b"x")
    try:
        with TritonServer(fleet.urls[0]) as server, pytest.raises(TritonError):
            server.load_model(broken)
        failed = alone.get_deployment(broken)
        assert failed["serving_version"] is None and failed["servers"][fleet.urls[0]]["reason"]
        assert failed["servers"][fleet.urls[1]]["reason"] == ""  # never tried there
    finally:
        for key in (f"{broken}/config.pbtxt", f"{broken}/1/model.bin"):
            s3.delete_object(Bucket=fleet.stack.bucket, Key=f"{fleet.prefix}/{key}")

    # The audit trail: where version 1 serves, since when, verified; no secret anywhere.
    tags = tags_of(name, "1")
    assert tags[f"triton.{name}.state"] == "serving" and tags[f"triton.{name}.verified"] == "true"
    assert tags[f"triton.{name}.target"] == fleet.target and tags[f"triton.{name}.repository"] == fleet.repository
    assert tags[f"triton.{name}.since"].endswith("Z") and tags[f"triton.{name}.triton_version"] == "1"
    secret = AWS_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    assert not any(secret in value or "@" in value for value in tags.values()), tags
    client.delete_deployment(name)


def test_watch_restores_a_restarted_replica_and_load_model_star_loads_the_pin(fleet, unique_name, record_property):
    name = unique_name
    (v1,) = register(name, 21)
    MlflowClient().set_registered_model_alias(name, ALIAS, "1")
    assert sync(spec := fleet.spec(name)).ok  # a sync promotion tags the version too
    assert tags_of(name, "1")[f"triton.{name}.state"] == "serving"
    assert all(ready_on(url, name, 1) for url in fleet.urls)
    # A newer version folder that config.pbtxt does not pin (as after a rollback or a refusal).
    s3, bucket = fleet.stack.s3_client(), fleet.stack.bucket
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=f"{fleet.prefix}/{name}/1/")["Contents"]:
        newer = item["Key"].replace(f"/{name}/1/", f"/{name}/2/")
        s3.copy_object(Bucket=bucket, Key=newer, CopySource={"Bucket": bucket, "Key": item["Key"]})
    restarted = fleet.urls[2]

    # Without watch: --load-model=* loads what config.pbtxt pins (version 1, not the newer 2).
    fleet.kill(2)
    fleet.start(2, "--load-model=*")
    with TritonServer(restarted) as server:
        states = {e.get("version"): e.get("state") for e in server.repository_index() if e.get("name") == name}
    assert states == {"1": "READY"}, states

    # A replica crashes and restarts empty (explicit mode): one watch round restores it.
    fleet.kill(2)
    live_at = fleet.start(2)
    assert not ready_on(restarted, name, 1)
    report = watch(spec, interval_s=1.0, max_rounds=1)
    ready_s = time.monotonic() - live_at
    assert report is not None and report.ok, report.to_dict()
    assert report.models[0].action == "unchanged" and report.models[0].reloaded == [restarted]
    assert ready_on(restarted, name, 1)
    x = sample(2, seed=3)
    out = TritonDeploymentClient(f"triton:/{restarted}").predict(name, {"features": x})
    np.testing.assert_allclose(np.asarray(out["predictions"]["scores"]), local(v1, x), rtol=1e-4, atol=1e-5)
    record_property("replica_live_to_ready_s", round(ready_s, 2))
    logger.warning("Replica live -> READY by one watch round: %.2f s", ready_s)
    TritonDeploymentClient(f"{fleet.target}?repository={fleet.repository}").delete_deployment(name)
