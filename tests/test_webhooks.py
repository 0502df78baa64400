"""Webhook receiver: MLflow's own signatures are accepted, anything else changes nothing."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
import uuid

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.webhooks.delivery import _generate_hmac_signature  # how MLflow signs deliveries
from mlflow_globals import tracking_uri
from test_promotion_support import ALIAS, CPU, assert_every_replica_serves, deployment, register  # noqa: F401

from mlflow_triton.daemons.webhooks import (
    SECRET_ENV,
    WebhookReceiver,
    register_webhook,
    signature,
    verify_signature,
)
from mlflow_triton.local.processes import free_port
from mlflow_triton.local.servers import mlflow_server
from mlflow_triton.promotion import SyncReport, load_spec
from mlflow_triton.rollout.publisher import ModelPublisher

SECRET = "s3cr3t-for-tests-only"


def event(name: str, alias: str = ALIAS, version: str = "2", kind=("model_version_alias", "created")) -> bytes:
    entity, action = kind
    payload = {"entity": entity, "action": action, "timestamp": "2026-01-01T00:00:00+00:00",
               "data": {"name": name, "alias": alias, "version": version}}  # fmt: skip
    return json.dumps(payload).encode()


def signed_headers(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    delivery_id, ts = str(uuid.uuid4()), str(int(time.time() if timestamp is None else timestamp))
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": ts,
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, ts, body.decode()),
    }


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# -- signatures (no stack) -------------------------------------------------------------------------
def test_signature_matches_mlflow_delivery_code():
    body = event("fraud")
    headers = signed_headers(body)
    assert signature(SECRET, headers["X-MLflow-Delivery-Id"], headers["X-MLflow-Timestamp"], body) == headers["X-MLflow-Signature"]
    assert verify_signature(SECRET, headers, body) == headers["X-MLflow-Delivery-Id"]
    rotated = {**headers, "X-MLflow-Signature": f"v1,bm90LWl0 {headers['X-MLflow-Signature']}"}
    assert verify_signature(SECRET, rotated, body)


@pytest.mark.parametrize(
    "change, code",
    [
        (lambda h, b: ({k: v for k, v in h.items() if k != "X-MLflow-Signature"}, b), "UNAUTHENTICATED"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "X-MLflow-Timestamp"}, b), "UNAUTHENTICATED"),
        (lambda h, b: (signed_headers(b, secret="wrong"), b), "PERMISSION_DENIED"),
        (lambda h, b: (h, b.replace(b'"2"', b'"3"')), "PERMISSION_DENIED"),
        (lambda h, b: ({**h, "X-MLflow-Delivery-Id": "other"}, b), "PERMISSION_DENIED"),
        (lambda h, b: (signed_headers(b, timestamp=time.time() - 3600), b), "PERMISSION_DENIED"),
    ],
    ids=["no-signature", "no-timestamp", "wrong-secret", "tampered-body", "other-delivery-id", "stale"],
)
def test_bad_deliveries_are_refused(change, code):
    body = event("fraud")
    headers, body = change(signed_headers(body), body)
    with pytest.raises(MlflowException) as err:
        verify_signature(SECRET, headers, body)
    assert err.value.error_code == code


# -- the receiver, with a recording reconciler (no stack) ------------------------------------------
@pytest.fixture
def receiver(monkeypatch, caplog):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    spec = load_spec(models=["fraud", "churn"], alias=ALIAS, repository="s3://bucket/repo",
                     triton="http://127.0.0.1:9", config=CPU)  # fmt: skip
    calls: list[str] = []

    def reconcile(selected, name):
        calls.append(name)
        return SyncReport()

    caplog.set_level(logging.DEBUG, logger="mlflow_triton")
    with WebhookReceiver(spec, port=0, reconcile=reconcile) as running:
        running.calls = calls
        yield running
    assert SECRET not in caplog.text and SECRET not in repr(running)


def test_receiver_rejects_unsigned_and_wrongly_signed(receiver):
    body = event("fraud")
    unsigned = {"Content-Type": "application/json"}
    assert post(receiver.url, body, unsigned)[0] == 401
    assert post(receiver.url, body, signed_headers(body, secret="not-the-secret"))[0] == 403
    assert post(receiver.url, body, signed_headers(body, timestamp=time.time() - 3600))[0] == 403
    assert receiver.wait_idle(5) and receiver.calls == []


def test_receiver_queues_followed_alias_events_once(receiver):
    body = event("fraud")
    headers = signed_headers(body)
    status, reply = post(receiver.url, body, headers)
    assert (status, reply["status"], reply["deployments"]) == (202, "queued", ["fraud"])
    assert post(receiver.url, body, headers) == (200, {"status": "duplicate"})  # replayed delivery
    for ignored in (event("other-model"), event("fraud", alias="staging"),
                    event("fraud", kind=("model_version", "created"))):  # fmt: skip
        status, reply = post(receiver.url, ignored, signed_headers(ignored))
        assert (status, reply["status"]) == (200, "ignored")
    bad_json = b"not json"
    assert post(receiver.url, bad_json, signed_headers(bad_json))[0] == 400
    assert receiver.wait_idle(5) and receiver.calls == ["fraud"]
    with urllib.request.urlopen(receiver.url + "health", timeout=5) as response:
        assert response.status == 200


def test_receiver_refuses_to_start_without_a_secret(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    spec = load_spec(models=["fraud"], repository="s3://bucket/repo", triton="http://127.0.0.1:9")
    with pytest.raises(MlflowException, match=SECRET_ENV):
        WebhookReceiver(spec, port=0)


# -- MLflow itself delivers the event (real stack + a webhook-enabled MLflow server) -------------
@pytest.fixture
def webhook_mlflow(stack, tmp_path):
    """An MLflow server that may call loopback URLs (off by default: SSRF protection)."""
    port = free_port()
    env = {
        **os.environ, **stack.env,
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
    }  # fmt: skip
    server = mlflow_server(
        port, tmp_path / "mlflow", tmp_path / "mlflow.log", env=env,
        artifact_root="s3://mlflow-artifacts/webhook-tests/",
    )  # fmt: skip
    server.start(180.0)
    try:
        with tracking_uri(f"http://127.0.0.1:{port}"):
            yield server
    finally:
        server.stop()


@pytest.mark.integration
def test_mlflow_alias_webhook_rolls_out_and_forgeries_change_nothing(stack, webhook_mlflow, deployment, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    (v1,) = register(deployment, 21)
    register(deployment, 22)
    spec = load_spec(models=[deployment], alias=ALIAS, config=CPU)
    registry = MlflowClient()
    with WebhookReceiver(spec, port=0) as receiver:
        hook = register_webhook(receiver.url, name=f"triton-{deployment}")
        registry.set_registered_model_alias(deployment, ALIAS, "1")  # MLflow POSTs the event

        deadline = time.monotonic() + 90
        while not receiver.reports and time.monotonic() < deadline:
            time.sleep(0.2)
        assert receiver.wait_idle(60)
        assert receiver.counts.get(202) == 1, (receiver.counts, webhook_mlflow.log_tail())
        (report,) = [m for r in receiver.reports for m in r.models]
        assert (report.action, report.registry_version, report.triton_version) == ("published", "1", 1)
        assert_every_replica_serves(stack.triton_urls, deployment, v1)
        metrics = receiver.metrics.registry.get_sample_value  # also scraped over HTTP: test_observability.py
        assert metrics("mlflow_triton_rollouts_total", {"deployment": deployment, "outcome": "ok"}) == 1
        assert metrics("mlflow_triton_promotion_lag_seconds_count", {"source": "webhook"}) == 1

        # Move the alias without a delivery, then forge the event: it must change nothing.
        registry.delete_webhook(hook.webhook_id)
        registry.set_registered_model_alias(deployment, ALIAS, "2")
        body = event(deployment, version="2")
        assert post(receiver.url, body, {"Content-Type": "application/json"})[0] == 401
        assert post(receiver.url, body, signed_headers(body, secret="guessed"))[0] == 403
        assert receiver.wait_idle(10) and len(receiver.reports) == 1
    state = ModelPublisher.for_config(spec.models[0].config, stack.triton_urls).read_state(deployment)
    assert state.serving_version == 1 and state.provenance.registered_version == "1"
    assert_every_replica_serves(stack.triton_urls, deployment, v1)
