"""Unit tests of the fleet features: replica discovery, target options, the Triton-only view,
the MLflow audit tags. No server: resolvers, clusters and the MLflow client are stubs.
The real servers are in tests/test_fleet.py."""

from __future__ import annotations

import logging
import socket
from types import SimpleNamespace as Obj

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
    ErrorCode,
)

from mlflow_triton.fleet import discovery
from mlflow_triton.fleet.discovery import resolve_urls, set_endpoint_slice_api, set_resolver
from mlflow_triton.fleet.errors import ReplicaUnreachable
from mlflow_triton.plugin.client import TritonDeploymentClient
from mlflow_triton.plugin.triton_view import describe_from_triton, list_from_triton, replica_states
from mlflow_triton.promotion.reconcile import watch
from mlflow_triton.promotion.spec import PromotionSpec
from mlflow_triton.rollout.audit import AuditTrail, mask_secrets, tag_key
from mlflow_triton.settings.target import parse_target_uri, target_options


def code(err: MlflowException) -> str:
    return ErrorCode.Name(err.error_code) if isinstance(err.error_code, int) else err.error_code


@pytest.fixture
def resolver():
    """Installs a stub resolver ({host: [addresses]}), counting lookups; restores DNS after."""
    table: dict[str, list[str]] = {}
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    previous = set_resolver(resolve)
    yield table, calls
    set_resolver(previous)


def test_dns_url_expands_to_every_address_plain_urls_kept(resolver):
    table, calls = resolver
    table["triton-headless.ml.svc"] = ["10.0.0.7", "10.0.0.8", "10.0.0.7", "fd00::9"]
    urls = parse_target_uri("triton:/dns+http://triton-headless.ml.svc:8000,http://edge:8000")
    assert resolve_urls(urls) == [
        "http://10.0.0.7:8000", "http://10.0.0.8:8000", "http://[fd00::9]:8000", "http://edge:8000",
    ]  # fmt: skip
    assert resolve_urls(parse_target_uri("triton:/dns+grpc://triton-headless.ml.svc:8001"))[0] == "grpc://10.0.0.7:8001"
    table["triton-headless.ml.svc"] = ["10.0.0.9"]  # a pod replaced: the next lookup sees it
    assert resolve_urls(urls) == ["http://10.0.0.9:8000", "http://edge:8000"]
    assert calls[-1] == ("triton-headless.ml.svc", 8000)


def test_unresolvable_or_empty_name_is_temporarily_unavailable(resolver):
    table, _ = resolver
    with pytest.raises(MlflowException) as missing:
        resolve_urls(["dns+http://nowhere.invalid:8000"])
    assert code(missing.value) == "TEMPORARILY_UNAVAILABLE" and "nowhere.invalid" in missing.value.message
    assert isinstance(missing.value.__cause__, socket.gaierror)
    table["empty-svc"] = []
    with pytest.raises(MlflowException) as empty:
        resolve_urls(["dns+http://empty-svc:8000"])
    assert code(empty.value) == "TEMPORARILY_UNAVAILABLE" and "no address" in empty.value.message


@pytest.mark.parametrize("url", ["dns+http://svc", "dns+ftp://svc:21", "dns+http://:8000", "dns+http://svc:99999"])
def test_malformed_discovery_url_is_refused_before_any_lookup(resolver, url):
    _, calls = resolver
    with pytest.raises(MlflowException) as err:
        parse_target_uri(f"triton:/{url}")
    assert err.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)
    assert "dns+http://NAME:PORT" in err.value.message and calls == []


def test_default_resolver_is_getaddrinfo():
    assert "127.0.0.1" in discovery.dns_resolver("localhost", 8000) or "::1" in discovery.dns_resolver("localhost", 8000)


def test_target_query_gives_the_repository_and_is_not_a_url():
    target = "triton:/http://t1:8000,http://t2:8000?repository=s3://models/triton&s3_endpoint_url=http://minio:9000"
    assert parse_target_uri(target) == ["http://t1:8000", "http://t2:8000"]
    assert target_options(target) == {"model_repository": "s3://models/triton", "s3_endpoint_url": "http://minio:9000"}
    assert target_options("triton") == {} and target_options("triton:/http://t1:8000") == {}
    with pytest.raises(MlflowException) as err:
        target_options("triton:/http://t1:8000?repo=s3://x")
    assert "'repo'" in err.value.message and "repository" in err.value.message


def test_client_remembers_the_repository_of_a_successful_create_and_of_the_target(monkeypatch):
    monkeypatch.delenv("TRITON_MODEL_REPO", raising=False)
    client = TritonDeploymentClient("triton:/http://t1:8000")
    assert client._config(None).model_repository is None
    client._config({"model_repository": "s3://no-such-bucket/x"})  # a call that fails later
    assert client._config(None).model_repository is None
    client._remember_repository(client._config({"model_repository": "s3://models/triton", "instance_kind": "cpu"}))
    assert client._config(None).model_repository == "s3://models/triton"
    monkeypatch.setenv("TRITON_MODEL_REPO", "s3://from-env/p")  # an explicit config still wins
    assert client._config({"instance_kind": "cpu"}).model_repository == "s3://from-env/p"
    queried = TritonDeploymentClient("triton:/http://t1:8000?repository=s3://other/p")
    assert queried._config(None).model_repository == "s3://other/p"
    assert queried._config({"model_repository": "s3://x/y"}).model_repository == "s3://x/y"


def test_each_watch_round_looks_the_replicas_up_again(resolver):
    table, calls = resolver
    table["fleet"] = ["127.0.0.2"]
    spec = PromotionSpec.from_dict({"triton": "dns+http://fleet:9", "repository": "s3://b/p"}, require_models=False)
    watch(spec, interval_s=0.01, max_rounds=3)
    assert calls == [("fleet", 9)] * 3


class FakeCluster:
    """repository_index / model_config answers of three replicas."""

    def __init__(self, indexes):
        self.indexes = indexes
        self.urls = list(indexes)

    def repository_index(self):
        return dict(self.indexes)

    def server(self, url):
        cluster = self

        class Server:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return None

            def model_config(self, name):
                cluster.config_from = url
                return {"name": name, "backend": "onnxruntime", "max_batch_size": 8}

        return Server()


FLEET = {
    "http://a:8000": [
        {"name": "fraud", "version": "2", "state": "READY", "reason": ""},
        {"name": "fraud", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
        {"name": "_mlflow-triton-staging.fraud", "version": "3", "state": "READY"},
        {"name": "broken", "version": "1", "state": "UNAVAILABLE", "reason": "unable to find backend 'nope'"},
        {"name": "idle"},
    ],
    "http://b:8000": [{"name": "fraud"}, {"name": "broken"}, {"name": "idle"}],
    "http://c:8000": ReplicaUnreachable("Triton at http://c:8000 is unreachable", "http://c:8000"),
}


def test_list_from_triton_shows_every_model_and_replica_state():
    listed = {d["name"]: d for d in list_from_triton(FakeCluster(FLEET))}
    assert sorted(listed) == ["broken", "fraud", "idle"]  # staging model left out
    fraud = listed["fraud"]
    assert fraud["serving_version"] == 2 and fraud["versions"] == [1, 2] and fraud["source"] == "triton"
    assert fraud["servers"]["http://a:8000"]["versions"] == {"2": "READY", "1": "UNAVAILABLE"}
    assert fraud["servers"]["http://b:8000"]["versions"] == {}  # known, not loaded: restarted
    assert fraud["servers"]["http://c:8000"]["state"] == "UNREACHABLE"
    assert listed["idle"]["serving_version"] is None


def test_replica_states_show_the_repository_s_versions_not_those_of_deleted_deployments():
    """Triton's index remembers versions 1-4 of an earlier deployment of the same name; the
    repository now holds 3 and 5: only those are listed, with the reason of each."""
    index = [
        {"name": "fraud", "version": v, "state": "UNAVAILABLE", "reason": "unloaded"} for v in ("1", "2", "4")
    ] + [
        {"name": "fraud", "version": "3", "state": "UNAVAILABLE", "reason": "unloaded"},
        {"name": "fraud", "version": "5", "state": "READY", "reason": ""},
        {"name": "fraud-other", "version": "3", "state": "READY", "reason": ""},
    ]  # fmt: skip
    states = replica_states({"http://a:8000": index}, "fraud", versions=[3, 5])
    assert states == {"http://a:8000": {"versions": {"3": "UNAVAILABLE", "5": "READY"}, "reason": "version 3: unloaded"}}
    assert list(states["http://a:8000"]["versions"]) == ["3", "5"]  # in version order
    everything = replica_states({"http://a:8000": index}, "fraud")["http://a:8000"]
    assert sorted(everything["versions"], key=int) == ["1", "2", "3", "4", "5"]


def test_get_from_triton_shows_the_reason_of_a_failed_model_and_the_served_config():
    cluster = FakeCluster(FLEET)
    broken = describe_from_triton(cluster, "broken")
    assert broken["serving_version"] is None and broken["config"] is None
    assert broken["servers"]["http://a:8000"]["reason"] == "version 1: unable to find backend 'nope'"
    fraud = describe_from_triton(cluster, "fraud")
    assert fraud["config"]["backend"] == "onnxruntime" and cluster.config_from == "http://a:8000"
    with pytest.raises(MlflowException) as err:
        describe_from_triton(cluster, "absent")
    assert err.value.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST) and "?repository=" in err.value.message


def test_all_replicas_down_raises_their_error():
    down = ReplicaUnreachable("unreachable", "http://a:8000")
    with pytest.raises(ReplicaUnreachable):
        list_from_triton(FakeCluster({"http://a:8000": down}))
    assert replica_states({"http://a:8000": down}, "x") == {"http://a:8000": {"state": "UNREACHABLE", "error": "unreachable"}}


class RecordingRegistry:
    def __init__(self, fail: bool = False):
        self.tags: dict[tuple[str, str], dict[str, str]] = {}
        self.fail = fail

    def set_model_version_tag(self, name, version, key, value):
        if self.fail:
            raise MlflowException("registry down", error_code=TEMPORARILY_UNAVAILABLE)
        self.tags.setdefault((name, str(version)), {})[key] = value


SECRET = "s3cr3t-Pa55"


def test_serving_tags_say_where_since_when_verified_and_mark_the_replaced_version():
    registry = RecordingRegistry()
    trail = AuditTrail("fraud", f"triton:/dns+http://ops:{SECRET}@triton-headless:8000", "s3://models/triton", registry)
    before = {"event": "serving", "version": 2, "registered_model": "fraud", "registered_version": "6"}
    entry = {"event": "serving", "version": 3, "via": "publish", "at": "2026-11-25T12:00:00Z", "verified": True,
             "registered_model": "fraud", "registered_version": "7"}  # fmt: skip
    trail.serving(entry, before)
    now = registry.tags[("fraud", "7")]
    assert now[tag_key("fraud", "state")] == "serving" and now["triton.fraud.since"] == "2026-11-25T12:00:00Z"
    assert now["triton.fraud.verified"] == "true" and now["triton.fraud.triton_version"] == "3"
    assert now["triton.fraud.target"] == "triton:/dns+http://***@triton-headless:8000"
    old = registry.tags[("fraud", "6")]
    assert old["triton.fraud.state"] == "replaced" and "registry version 7" in old["triton.fraud.replaced_by"]
    rollback = {**before, "version": 2, "via": "rollback", "at": "2026-11-25T12:05:00Z", "rolled_back_from": 3}
    trail.serving(rollback, entry)
    assert registry.tags[("fraud", "7")]["triton.fraud.state"] == "rolled_back"
    assert registry.tags[("fraud", "6")]["triton.fraud.state"] == "serving"


def test_refused_tags_and_a_refused_republish_of_the_serving_version():
    registry = RecordingRegistry()
    trail = AuditTrail("fraud", "triton:/http://t1:8000", "s3://models/triton", registry)
    serving = {"event": "serving", "version": 3, "registered_model": "fraud", "registered_version": "7"}
    refused = {"event": "refused", "version": 4, "via": "publish", "at": "T1", "reason": "smoke mismatch",
               "registered_model": "fraud", "registered_version": "8"}  # fmt: skip
    trail.refused(refused, serving)
    assert registry.tags[("fraud", "8")]["triton.fraud.state"] == "refused"
    assert registry.tags[("fraud", "8")]["triton.fraud.refused_reason"] == "smoke mismatch"
    trail.refused({**refused, "registered_version": "7", "at": "T2"}, serving)
    assert "triton.fraud.state" not in registry.tags[("fraud", "7")]  # it still serves
    assert registry.tags[("fraud", "7")]["triton.fraud.refused_at"] == "T2"


def test_tags_never_hold_secrets():
    registry = RecordingRegistry()
    trail = AuditTrail(
        "fraud", f"triton:/https://admin:{SECRET}@t1:8000?repository=s3://b/p&token={SECRET}",
        f"s3://b/p?X-Amz-Signature={SECRET}", registry,
    )  # fmt: skip
    reason = f"failed to load from s3://AKIA:{SECRET}@minio:9000/b/p (password={SECRET})"
    entry = {"event": "refused", "version": 1, "via": "publish", "at": "T", "reason": reason,
             "registered_model": "m", "registered_version": "1"}  # fmt: skip
    trail.refused(entry, None)
    trail.serving({**entry, "event": "serving"}, None)
    values = list(registry.tags[("m", "1")].values())
    assert values and not any(SECRET in value for value in values), values
    assert mask_secrets("http://u:p@h:1/x?a=1") == "http://***@h:1/x?a=1"


def test_a_tag_failure_warns_and_does_not_raise(caplog):
    trail = AuditTrail("fraud", "triton:/http://t1:8000", "s3://b/p", RecordingRegistry(fail=True))
    entry = {"event": "serving", "version": 1, "via": "publish", "at": "T", "registered_model": "m", "registered_version": "1"}
    with caplog.at_level(logging.WARNING, logger="mlflow_triton.rollout.audit"):
        trail.serving(entry, None)
    assert "Could not tag registered model 'm' version 1" in caplog.text
    trail.serving({**entry, "registered_model": None}, None)  # not from the registry: nothing to tag


class EndpointSlices:
    """A stub of kubernetes.client.DiscoveryV1Api: the slices of one Service, recorded calls."""

    def __init__(self, slices=None, error=None):
        self.slices, self.error, self.calls = slices or [], error, []

    def list_namespaced_endpoint_slice(self, namespace, label_selector=None):
        self.calls.append((namespace, label_selector))
        if self.error:
            raise self.error
        return Obj(items=self.slices)


def endpoint(address, ready=True):
    return Obj(addresses=[address], conditions=Obj(ready=ready, serving=ready, terminating=False))


@pytest.fixture
def k8s_api():
    api = EndpointSlices([
        Obj(ports=[Obj(name="http", port=8000), Obj(name="grpc", port=8001)],
            endpoints=[endpoint("10.1.0.4"), endpoint("10.1.0.5", ready=False), endpoint("10.1.0.6", ready=None)]),
        Obj(ports=[Obj(name="http", port=8000), Obj(name="grpc", port=8001)], endpoints=[endpoint("10.1.1.9")]),
    ])  # fmt: skip
    previous = set_endpoint_slice_api(api)
    yield api
    set_endpoint_slice_api(previous)


def test_k8s_target_reads_the_ready_endpoints_of_every_endpoint_slice(k8s_api):
    urls = parse_target_uri("triton:/k8s://ml/triton")
    assert resolve_urls(urls) == ["http://10.1.0.4:8000", "http://10.1.0.6:8000", "http://10.1.1.9:8000"]
    assert k8s_api.calls == [("ml", "kubernetes.io/service-name=triton")]
    assert resolve_urls(parse_target_uri("triton:/k8s://ml/triton/grpc"))[0] == "grpc://10.1.0.4:8001"
    with pytest.raises(MlflowException) as err:
        resolve_urls(parse_target_uri("triton:/k8s://ml/triton/metrics"))
    assert code(err.value) == "TEMPORARILY_UNAVAILABLE" and "'metrics'" in err.value.message


def test_k8s_api_failure_is_temporarily_unavailable_and_bad_form_is_invalid():
    previous = set_endpoint_slice_api(EndpointSlices(error=OSError("connection refused")))
    try:
        with pytest.raises(MlflowException) as err:
            resolve_urls(["k8s://ml/triton"])
        assert code(err.value) == "TEMPORARILY_UNAVAILABLE" and isinstance(err.value.__cause__, OSError)
    finally:
        set_endpoint_slice_api(previous)
    with pytest.raises(MlflowException) as bad:
        parse_target_uri("triton:/k8s://ml")
    assert code(bad.value) == "INVALID_PARAMETER_VALUE" and "k8s://NAMESPACE/SERVICE" in bad.value.message


def test_a_hanging_registry_does_not_hold_the_rollout(monkeypatch, caplog):
    import threading

    from mlflow_triton.rollout import audit

    release = threading.Event()

    class Hanging(RecordingRegistry):
        def set_model_version_tag(self, *args):
            release.wait(5)

    monkeypatch.setattr(audit, "TAG_TIMEOUT_S", 0.05)
    entry = {"event": "serving", "version": 1, "via": "publish", "at": "T", "registered_model": "m", "registered_version": "1"}
    with caplog.at_level(logging.WARNING, logger="mlflow_triton.rollout.audit"):
        AuditTrail("fraud", "triton:/http://t1:8000", "s3://b/p", Hanging()).serving(entry, None)
    release.set()
    assert "the rollout goes on" in caplog.text


def test_fan_out_threads_leave_no_gevent_hub_or_descriptor_behind():
    """Each fan-out runs in new pool threads; their gevent hubs (epoll + eventfd) must go with them."""
    import gc

    import psutil
    from gevent.hub import Hub
    from stub_triton import StubTriton

    from mlflow_triton.fleet.server import TritonCluster

    process = psutil.Process()
    with StubTriton() as first, StubTriton() as second:
        cluster = TritonCluster([first.url, second.url])
        cluster.ready_models()
        before = process.num_fds()
        for _ in range(40):
            cluster.ready_models()
            assert cluster.not_ready("absent", 1) == [first.url, second.url]
        gc.collect()
        assert process.num_fds() <= before + 6  # was +4 per iteration
        assert not [o for o in gc.get_objects() if isinstance(o, Hub) and not o.loop]  # destroyed and freed
