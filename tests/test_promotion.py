"""Registry-driven promotion on the real stack: alias flips reach every replica, safely."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from models import Scorer, log_onnx, sample
from test_promotion_support import ALIAS, CPU, deployment, local, register  # noqa: F401 (fixture)
from test_promotion_support import assert_every_replica_serves as _assert_serves

from mlflow_triton import promotion
from mlflow_triton.cli import cli
from mlflow_triton.fleet.server import TritonServer
from mlflow_triton.promotion import load_spec, sync
from mlflow_triton.rollout import verification
from mlflow_triton.rollout.publisher import ModelPublisher

pytestmark = pytest.mark.integration


def assert_every_replica_serves(stack, name, model) -> None:
    _assert_serves(stack.triton_urls, name, model)


def publisher(stack, spec):
    return ModelPublisher.for_config(spec.models[0].config, stack.triton_urls)


def test_alias_flip_reaches_every_replica_and_resync_is_a_noop(stack, deployment, tmp_path, monkeypatch):
    v1, v2 = register(deployment, 21, 22)
    registry = MlflowClient()
    spec = load_spec(models=[deployment], alias=ALIAS, config=CPU)

    registry.set_registered_model_alias(deployment, ALIAS, "1")
    first = sync(spec)
    assert first.ok, first.to_dict()
    assert (first.models[0].action, first.models[0].registry_version) == ("published", "1")
    assert_every_replica_serves(stack, deployment, v1)

    registry.set_registered_model_alias(deployment, ALIAS, "2")
    second = sync(spec)
    report = second.models[0]
    assert second.ok and report.action == "published", second.to_dict()
    assert (report.registry_version, report.previous_registry_version) == ("2", "1")
    assert (report.triton_version, report.previous_triton_version) == (2, 1)
    assert_every_replica_serves(stack, deployment, v2)

    # The third round compares provenance only: nothing is resolved, downloaded or uploaded.
    def no_download(*args, **kwargs):
        raise AssertionError("an unchanged model must not be resolved or downloaded")

    monkeypatch.setattr(promotion.reconcile, "resolve_model", no_download)
    third = sync(spec)
    report = third.models[0]
    assert third.ok and not third.changed
    assert (report.action, report.bytes_uploaded, report.bytes_copied) == ("unchanged", 0, 0)
    assert report.triton_version == 2 and report.reloaded == []
    state = publisher(stack, spec).read_state(deployment)
    assert state.serving_version == 2 and state.provenance.registered_version == "2"


def test_alias_flip_has_zero_downtime(stack, deployment, tmp_path, record_property):
    v1, v2 = register(deployment, 21, 22)
    registry = MlflowClient()
    spec = load_spec(models=[deployment], alias=ALIAS, config=CPU)
    registry.set_registered_model_alias(deployment, ALIAS, "1")
    assert sync(spec).ok

    x = sample(2, seed=41)
    expected = {"v1": local(v1, x), "v2": local(v2, x)}
    done = threading.Event()
    latencies: list[float] = []
    failures: list[str] = []
    seen: dict[str, int] = {"v1": 0, "v2": 0, "other": 0}
    lock = threading.Lock()

    def hammer(url: str) -> None:
        deadline = time.monotonic() + 20.0  # bounded, whatever happens
        with TritonServer(url, timeout_s=10.0) as server:
            while not done.is_set() and time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    out = server.infer(deployment, {"features": x}, {"features": "FP32"}, ["scores"])["scores"]
                except Exception as err:  # counted, never raised: the assertion is on the count
                    with lock:
                        failures.append(f"{url}: {err}")
                    continue
                elapsed = time.perf_counter() - started
                which = next((k for k, v in expected.items() if np.allclose(out, v, rtol=1e-4, atol=1e-5)), "other")
                with lock:
                    latencies.append(elapsed)
                    seen[which] += 1

    threads = [threading.Thread(target=hammer, args=(url,)) for url in stack.triton_urls]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    registry.set_registered_model_alias(deployment, ALIAS, "2")
    report = sync(spec)
    time.sleep(0.5)
    done.set()
    for thread in threads:
        thread.join(30)

    assert report.ok and report.models[0].action == "published", report.to_dict()
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
    summary = (
        f"zero-downtime flip: {len(latencies)} requests, {len(failures)} failed, "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies) * 1000:.1f} ms, "
        f"answers v1={seen['v1']} v2={seen['v2']} other={seen['other']}, "
        f"sync {report.models[0].seconds:.1f}s"
    )
    print(summary)
    for key, value in (("requests", len(latencies)), ("failed_requests", len(failures)),
                       ("p50_ms", round(p50, 2)), ("p99_ms", round(p99, 2))):  # fmt: skip
        record_property(key, value)
    assert failures == [], failures[:5]
    assert seen["other"] == 0 and seen["v1"] > 0 and seen["v2"] > 0, summary
    assert_every_replica_serves(stack, deployment, v2)


def unloadable_onnx() -> bytes:
    """A well-formed ONNX graph (features -> scores, as the signature says) whose one node is
    an operator no runtime knows: the graph reads fine, every replica refuses to load it."""
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOperator", ["features"], ["scores"], domain="mlflow_triton.test")
    graph = helper.make_graph(
        [node], "unloadable",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("mlflow_triton.test", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


@pytest.mark.parametrize("corruption", ["unloadable", "garbage"])
def test_refused_version_exits_nonzero_and_previous_keeps_serving(stack, deployment, tmp_path, corruption):
    _, v2 = register(deployment, 21, 22)
    (tmp_path / "bad").mkdir()
    log_onnx(Scorer(seed=27), tmp_path / "bad", registered_name=deployment)  # its own copy
    registry = MlflowClient()
    # Version 3 is corrupted after logging: the MLmodel is fine, model.onnx is not. A garbage
    # file is refused before anything is written; a graph that does not load is refused
    # when every replica tries it under the staging name.
    location = registry.get_model_version_download_uri(deployment, "3")
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    body = unloadable_onnx() if corruption == "unloadable" else np.random.bytes(4096)
    stack.s3_client().put_object(Bucket=bucket, Key=f"{prefix.rstrip('/')}/model.onnx", Body=body)
    runner = CliRunner()
    args = ["sync", "--model", deployment, "--alias", ALIAS, "-C", "instance_kind=cpu"]
    registry.set_registered_model_alias(deployment, ALIAS, "2")
    ok = runner.invoke(cli, args)
    assert ok.exit_code == 0, ok.output
    assert "published registry version 2" in ok.output
    spec = load_spec(models=[deployment], alias=ALIAS, config=CPU)
    before = publisher(stack, spec).read_state(deployment)

    registry.set_registered_model_alias(deployment, ALIAS, "3")
    failed = runner.invoke(cli, args)

    assert failed.exit_code == 1, failed.output
    assert "failed" in failed.output
    if corruption == "unloadable":
        assert "rejected" in failed.output and "NoSuchOperator" in failed.output
        assert f"repository still serves version {before.serving_version}" in failed.output
    else:
        assert "not a readable ONNX model" in failed.output
    after = publisher(stack, spec).read_state(deployment)
    assert after.serving_version == before.serving_version
    assert after.versions == before.versions
    assert after.provenance.registered_version == "2"
    assert after.config_bytes == before.config_bytes
    assert_every_replica_serves(stack, deployment, v2)


def test_smoke_mismatch_rolls_back(stack, deployment, tmp_path, monkeypatch):
    v1, _ = register(deployment, 21, 22)
    registry = MlflowClient()
    spec = load_spec(models=[deployment], alias=ALIAS, config=CPU)
    registry.set_registered_model_alias(deployment, ALIAS, "1")
    assert sync(spec).ok
    original = verification.SmokeTest._run_locally

    def off_by_one(self, *args, **kwargs):  # the local reference disagrees with Triton
        return {k: v + 1.0 for k, v in original(self, *args, **kwargs).items()}

    monkeypatch.setattr(verification.SmokeTest, "_run_locally", off_by_one)
    registry.set_registered_model_alias(deployment, ALIAS, "2")
    report = sync(spec).models[0]

    assert report.action == "failed" and "differs from the local onnx run" in report.error
    assert report.refused  # by type (VersionRefused), for the rollouts_total{outcome="refused"} metric
    assert "max abs diff" in report.error
    state = publisher(stack, spec).read_state(deployment)
    assert state.serving_version == 1 and state.versions == [1]
    assert_every_replica_serves(stack, deployment, v1)


def test_concurrent_syncs_do_not_tear_the_repository(stack, deployment, tmp_path):
    (v1,) = register(deployment, 21)
    MlflowClient().set_registered_model_alias(deployment, ALIAS, "1")
    spec = load_spec(models=[deployment], alias=ALIAS, config=CPU)
    barrier = threading.Barrier(2)
    reports = []

    def run() -> None:
        barrier.wait()
        reports.append(sync(spec).models[0])

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert sorted(r.action for r in reports) == ["published", "unchanged"], [r.to_dict() for r in reports]
    assert all(r.triton_version == 1 for r in reports)
    pub = publisher(stack, spec)
    state = pub.read_state(deployment)
    assert state.versions == [1] and state.serving_version == 1
    assert pub.store.read_bytes(f"{deployment}/.mlflow-triton.lease") is None
    assert_every_replica_serves(stack, deployment, v1)

    # Without waiting, the loser reports the conflict instead; nothing is written.
    resized = {**CPU, "max_batch_size": "16"}  # new settings: a publish is due
    impatient = load_spec(models=[deployment], alias=ALIAS, config=resized, lease_wait_s=0)
    with pub.lease(deployment):
        report = sync(impatient).models[0]
    assert report.action == "failed" and "holds the lease" in report.error
    assert not report.refused  # a failure, not a verdict on the model
    assert pub.read_state(deployment).versions == [1]
