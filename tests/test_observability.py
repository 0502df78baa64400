"""The daemons' operator side: /metrics and /healthz over real HTTP(S), request limits, JSON logs.

Unit tests use a recording reconciler (no stack); the integration test runs `mlflow-triton
watch` as a process against the shared stack and scrapes it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prometheus_client.parser import text_string_to_metric_families
from test_promotion_support import ALIAS, CPU, deployment, register  # noqa: F401
from test_webhooks import SECRET, event, post, signed_headers

from mlflow_triton.daemons.log_format import JsonFormatter
from mlflow_triton.daemons.metrics import RolloutMetrics, rollout_outcome
from mlflow_triton.daemons.webhooks import SECRET_ENV, WebhookReceiver
from mlflow_triton.local.processes import free_port
from mlflow_triton.promotion import ModelReport, SyncReport, load_spec
from mlflow_triton.promotion.reconcile import _is_refusal
from mlflow_triton.rollout.switch import VersionRefused


def scrape(url: str, context: ssl.SSLContext | None = None) -> dict[tuple[str, tuple], float]:
    """GET /metrics and parse it with prometheus_client's parser: {(sample, labels): value}."""
    with urllib.request.urlopen(url + "metrics", timeout=10, context=context) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }  # fmt: skip


def report(deployment: str, action: str, registry_version: str, triton_version: int | None,
           seconds: float = 2.0, refused: bool = False) -> ModelReport:  # fmt: skip
    return ModelReport(deployment, ALIAS, deployment, action=action, registry_version=registry_version,  # type: ignore[arg-type]
                       triton_version=triton_version, seconds=seconds, refused=refused)  # fmt: skip


# -- metrics (no servers) --------------------------------------------------------------------------
def test_rollouts_are_classified_by_outcome_and_lag_runs_from_the_alias_move():
    metrics = RolloutMetrics()
    metrics.alias_moved("fraud", "2", at=1000.0)  # a webhook event's time
    metrics.record(SyncReport([report("fraud", "failed", "2", None, refused=True),
                               report("churn", "failed", "5", None)]), "webhook", now=1010.0)  # fmt: skip
    metrics.record(SyncReport([report("fraud", "published", "2", 7), report("churn", "unchanged", "4", 3)]),
                   "webhook", now=1030.0)  # fmt: skip
    value = metrics.registry.get_sample_value
    assert value("mlflow_triton_rollouts_total", {"deployment": "fraud", "outcome": "refused"}) == 1
    assert value("mlflow_triton_rollouts_total", {"deployment": "churn", "outcome": "failed"}) == 1
    assert value("mlflow_triton_rollouts_total", {"deployment": "fraud", "outcome": "ok"}) == 1
    assert value("mlflow_triton_rollouts_total", {"deployment": "churn", "outcome": "ok"}) is None
    assert value("mlflow_triton_rollout_duration_seconds_count", {"outcome": "refused"}) == 1
    assert value("mlflow_triton_serving_version", {"deployment": "fraud", "registered_model": "fraud"}) == 7
    assert value("mlflow_triton_serving_version", {"deployment": "churn", "registered_model": "churn"}) == 3
    assert value("mlflow_triton_serving_registry_version", {"deployment": "fraud", "registered_model": "fraud"}) == 2
    # from the event (t=1000) to the round that served it (t=1030), not from the failed round
    assert value("mlflow_triton_promotion_lag_seconds_count", {"source": "webhook"}) == 1
    assert value("mlflow_triton_promotion_lag_seconds_sum", {"source": "webhook"}) == 30.0
    assert value("mlflow_triton_last_round_timestamp_seconds") == 1030.0


def test_watch_lag_starts_when_the_watcher_first_saw_the_move():
    metrics = RolloutMetrics()
    metrics.record(SyncReport([report("fraud", "failed", "2", None, seconds=4.0)]), "watch", now=100.0)
    metrics.record(SyncReport([report("fraud", "published", "2", 1, seconds=5.0)]), "watch", now=200.0)
    value = metrics.registry.get_sample_value
    assert value("mlflow_triton_promotion_lag_seconds_sum", {"source": "watch"}) == 104.0  # 200 - (100 - 4)
    metrics.record(SyncReport([report("fraud", "unchanged", "2", 1)]), "watch", now=300.0)
    assert value("mlflow_triton_promotion_lag_seconds_count", {"source": "watch"}) == 1  # observed once


def test_a_refusal_is_recognised_by_type_through_wrapping():
    refused = VersionRefused("replica said no")
    try:
        try:
            raise refused
        except VersionRefused as err:
            raise MlflowException("not published: replica said no") from err
    except MlflowException as wrapped:
        assert _is_refusal(wrapped)
    assert not _is_refusal(MlflowException("S3 unreachable"))
    assert rollout_outcome(report("x", "failed", "1", None, refused=True)) == "refused"
    assert rollout_outcome(report("x", "unchanged", "1", 1)) is None


# -- the webhook receiver's HTTP side (no stack) ---------------------------------------------------
@pytest.fixture
def spec(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return load_spec(models=["fraud"], alias=ALIAS, repository="s3://bucket/repo",
                     triton="http://127.0.0.1:9", config=CPU)  # fmt: skip


def publishes(selected, name):
    return SyncReport([report("fraud", "published", "2", 4, seconds=1.5)])


def test_receiver_serves_healthz_and_metrics_over_http(spec):
    with WebhookReceiver(spec, port=0, reconcile=publishes) as receiver:
        body = event("fraud", version="2")
        assert post(receiver.url, body, signed_headers(body))[0] == 202
        assert receiver.wait_idle(10)
        with urllib.request.urlopen(receiver.url + "healthz", timeout=5) as response:
            health = json.loads(response.read())
        assert health["status"] == "ok" and health["rollout_worker"] == "running"
        metrics = scrape(receiver.url)
    assert metrics[("mlflow_triton_rollouts_total", (("deployment", "fraud"), ("outcome", "ok")))] == 1
    assert metrics[("mlflow_triton_serving_version", (("deployment", "fraud"), ("registered_model", "fraud")))] == 4
    assert metrics[("mlflow_triton_promotion_lag_seconds_count", (("source", "webhook"),))] == 1


def test_receiver_limits_body_size_and_time(spec):
    with WebhookReceiver(spec, port=0, reconcile=publishes, max_body_bytes=1000, body_timeout_s=0.5) as receiver:
        big = b"x" * 2000
        assert post(receiver.url, big, signed_headers(big))[0] == 413  # declared length
        host, port = receiver.url.split("//")[1].rstrip("/").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # chunked, no length
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n%s\r\n" % (1500, b"y" * 1500) + b"0\r\n\r\n")  # fmt: skip
            assert sock.recv(100).startswith(b"HTTP/1.1 413")
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # slow sender
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"partial")
            started = time.monotonic()
            assert sock.recv(100).startswith(b"HTTP/1.1 408")
            assert time.monotonic() - started < 5
        assert receiver.wait_idle(5) and receiver.counts == {413: 2, 408: 1}


def self_signed(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return str(cert_path), str(key_path)


def test_receiver_serves_https_with_the_given_certificate(spec, tmp_path):
    from mlflow_triton.daemons.ops_server import TLSFiles

    cert, key = self_signed(tmp_path)
    with WebhookReceiver(spec, port=0, reconcile=publishes, tls=TLSFiles(cert, key)) as receiver:
        assert receiver.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=cert)
        with urllib.request.urlopen(receiver.url + "healthz", timeout=5, context=trusted) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.URLError):  # not plain HTTP, and not trusted by default
            urllib.request.urlopen(receiver.url + "healthz", timeout=5)
    with pytest.raises(MlflowException, match="--tls-key"):
        TLSFiles.from_options(cert, None)
    with pytest.raises(MlflowException, match="matching private key") as err:
        WebhookReceiver(spec, port=0, reconcile=publishes, tls=TLSFiles(cert, cert))  # a cert is no key
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


# -- JSON logs ---------------------------------------------------------------------------------------
def test_json_log_lines_are_one_object_each():
    formatter = JsonFormatter()
    record = logging.LogRecord("mlflow_triton.x", logging.INFO, __file__, 1, "published %s", ("v2",), None)
    record.deployment = "fraud"  # an extra= field
    entry = json.loads(formatter.format(record))
    assert entry["message"] == "published v2" and entry["level"] == "INFO" and entry["deployment"] == "fraud"
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = formatter.format(failed)
    assert "\n" not in line and "boom" in json.loads(line)["exception"]


# -- watch, as a process, scraped (shared stack) -----------------------------------------------------
@pytest.mark.integration
def test_watch_serves_metrics_and_healthz_and_logs_json(stack, deployment):
    register(deployment, 21)
    MlflowClient().set_registered_model_alias(deployment, ALIAS, "1")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    argv = [sys.executable, "-m", "mlflow_triton.cli", "--log-format", "json", "watch", "--model", deployment,
            "--alias", ALIAS, "-C", "instance_kind=cpu", "--interval", "1", "--listen", f"127.0.0.1:{port}"]  # fmt: skip
    process = subprocess.Popen(argv, env=dict(os.environ), stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    serving = ("mlflow_triton_serving_version", (("deployment", deployment), ("registered_model", deployment)))
    try:
        deadline = time.monotonic() + 120
        metrics: dict = {}
        while metrics.get(serving) != 1.0:
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
            try:
                metrics = scrape(url)
            except (urllib.error.URLError, ConnectionError):
                continue
        assert metrics[("mlflow_triton_rollouts_total", (("deployment", deployment), ("outcome", "ok")))] == 1
        assert metrics[("mlflow_triton_promotion_lag_seconds_count", (("source", "watch"),))] == 1
        assert metrics[("mlflow_triton_rollout_duration_seconds_count", (("outcome", "ok"),))] == 1
        with urllib.request.urlopen(url + "healthz", timeout=5) as response:
            assert json.loads(response.read())["rounds"] >= 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(5)
    not_json = [line for line in lines if line.strip() and not line.startswith("{")]
    assert not not_json, not_json
    entries = [json.loads(line) for line in lines if line.strip()]  # every stderr line is JSON
    messages = [e["message"] for e in entries]
    assert any("published registry version 1 as Triton version 1" in m for m in messages), messages
    assert any(m.startswith("Received SIGTERM") for m in messages)


def test_watch_health_turns_unhealthy_when_rounds_stop():
    from mlflow_triton.daemons.ops_server import Heartbeat

    heartbeat = Heartbeat(stale_after_s=0.2)
    assert heartbeat.check()[0]
    time.sleep(0.3)
    healthy, details = heartbeat.check()
    assert not healthy and details["rounds"] == 0 and details["seconds_since_last_round"] >= 0.2
    heartbeat.beat()
    assert heartbeat.check()[0] and heartbeat.check()[1]["rounds"] == 1


def test_bad_listen_and_tls_options_are_refused_before_any_work(tmp_path):
    from click.testing import CliRunner

    from mlflow_triton.cli import cli

    base = ["watch", "--model", "fraud", "--repo", "s3://b/p", "--triton", "http://127.0.0.1:9"]
    result = CliRunner().invoke(cli, [*base, "--listen", "nine-thousand"])
    assert result.exit_code == 2 and "[HOST:]PORT" in result.output, result.output
    cert = tmp_path / "tls.crt"
    cert.write_text("not used")
    result = CliRunner().invoke(cli, [*base, "--listen", f"127.0.0.1:{free_port()}", "--tls-cert", str(cert)])
    assert result.exit_code == 1 and "--tls-key" in result.output, result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = CliRunner().invoke(cli, [*base, "--listen", f"127.0.0.1:{taken.getsockname()[1]}"])
    assert result.exit_code == 1 and "Cannot listen on 127.0.0.1" in result.output, result.output
