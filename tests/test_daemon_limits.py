"""The daemons' HTTP side holds up against idle, slow and malformed clients (no stack).

* 200 idle and 200 half-sent connections to the webhook receiver and to ``watch --listen``'s
  server do not keep a signed delivery, ``/healthz`` or ``/metrics`` from answering within
  2 s, nor make the server hold more connections than its cap.
* A request head must arrive within the head timeout even when trickled byte by byte.
* Any signed body (hypothesis: arbitrary JSON, arbitrary bytes, deep nesting) gets an answer
  below 500; client-sent text is escaped and bounded in the log; refusals are rate limited.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_promotion_support import ALIAS, CPU
from test_webhooks import SECRET, event, post, signed_headers

from mlflow_triton.daemons.http_guard import connection_limit
from mlflow_triton.daemons.metrics import RolloutMetrics
from mlflow_triton.daemons.ops_server import BackgroundServer, Heartbeat, ops_routes
from mlflow_triton.daemons.webhooks import SECRET_ENV, WebhookReceiver, signature
from mlflow_triton.promotion import SyncReport, load_spec

IDLE = PARTIAL = 200
ANSWER_WITHIN_S = 2.0


@pytest.fixture
def blocked_receiver(monkeypatch):
    """A receiver whose rollouts block until the test ends: deliveries queue up."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    spec = load_spec(models=["fraud", "churn"], alias=ALIAS, repository="s3://bucket/repo",
                     triton="http://127.0.0.1:9", config=CPU)  # fmt: skip
    release = threading.Event()

    def reconcile(selected, name):
        release.wait(60)
        return SyncReport()

    with WebhookReceiver(spec, port=0, reconcile=reconcile) as receiver:
        yield receiver
        release.set()


def address(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    return host, int(port)


@contextmanager
def held_connections(url: str) -> Iterator[list[socket.socket]]:
    """:data:`IDLE` connections that send nothing and :data:`PARTIAL` that stop mid-head."""
    sockets: list[socket.socket] = []
    try:
        for i in range(IDLE + PARTIAL):
            sock = socket.create_connection(address(url), timeout=10)
            if i >= IDLE:
                sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-MLflow-Delivery-Id: half-")
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def timed_get(url: str) -> tuple[int, float]:
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=ANSWER_WITHIN_S) as response:
        response.read()
        return response.status, time.monotonic() - started


def test_held_connections_do_not_shut_out_deliveries_or_health(blocked_receiver):
    url = blocked_receiver.url
    first = event("churn")
    assert post(url, first, signed_headers(first))[0] == 202  # its rollout blocks: the queue fills
    with held_connections(url):
        started = time.monotonic()
        body = event("fraud")
        status, reply = post(url, body, signed_headers(body))
        assert status == 202 and time.monotonic() - started < ANSWER_WITHIN_S, reply
        status, took = timed_get(url + "healthz")
        assert status == 200 and took < ANSWER_WITHIN_S
        assert timed_get(url + "metrics")[0] == 200
        health = json.loads(urllib.request.urlopen(url + "healthz", timeout=5).read())
        assert health["busy"] and health["queued"] == ["fraud"]  # answered while a rollout runs and one waits


def test_watch_ops_server_answers_while_connections_are_held():
    heartbeat = Heartbeat(stale_after_s=60)
    server = BackgroundServer(ops_routes(RolloutMetrics().registry, heartbeat.check), "127.0.0.1", 0).start()
    try:
        with held_connections(server.url):
            status, took = timed_get(server.url + "healthz")
            assert status == 200 and took < ANSWER_WITHIN_S
            assert timed_get(server.url + "metrics")[0] == 200
            assert server.open_connections <= connection_limit()
    finally:
        server.stop()


def test_a_request_head_must_arrive_in_time_even_byte_by_byte():
    server = BackgroundServer(ops_routes(RolloutMetrics().registry, Heartbeat(60).check), "127.0.0.1", 0,
                              head_timeout_s=0.5, max_connections=4).start()  # fmt: skip
    try:
        with socket.create_connection(address(server.url), timeout=5) as slow:
            started = time.monotonic()
            closed = False
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"y" * 100:
                try:
                    slow.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                time.sleep(0.05)
            if not closed:
                slow.settimeout(5)
                assert slow.recv(100) == b""  # closed by the server, not answered
            assert time.monotonic() - started < 3
        # Over the cap, the longest-idle connection makes room for the newcomer.
        idle = [socket.create_connection(address(server.url), timeout=5) for _ in range(4)]
        assert timed_get(server.url + "healthz")[0] == 200
        idle[0].settimeout(5)
        assert idle[0].recv(10) == b""
        for sock in idle:
            sock.close()
    finally:
        server.stop()


# -- signed bodies: never a 5xx -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def receiver():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_ENV, SECRET)
        spec = load_spec(models=["fraud"], alias=ALIAS, repository="s3://bucket/repo",
                         triton="http://127.0.0.1:9", config=CPU)  # fmt: skip
        with WebhookReceiver(spec, port=0, reconcile=lambda s, name: SyncReport()) as running:
            yield running


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
    | st.integers(0xD800, 0xDFFF).map(chr),  # lone surrogates: valid in JSON, not in UTF-8
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {"entity": st.sampled_from(["model_version_alias", "registered_model"]) | json_values,
     "action": st.sampled_from(["created", "deleted"]) | json_values},
    optional={"data": json_values | st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["fraud", "churn"]) | json_values, "alias": st.just(ALIAS) | json_values,
        "version": json_values}), "timestamp": json_values},
)  # fmt: skip
bodies = (
    event_like.map(lambda e: json.dumps(e).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
    | st.integers(1, 200_000).map(lambda depth: b"[" * depth + b"]" * depth)
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_any_signed_body_gets_an_answer_below_500(receiver, body):
    status, reply = post_raw(receiver.url, body, signed_bytes(body))
    assert 200 <= status < 500, (status, reply, body[:200])


def signed_bytes(body: bytes) -> dict[str, str]:
    """MLflow's signature over raw bytes (the test helper signs text)."""
    delivery_id, timestamp = f"prop-{time.monotonic_ns()}", str(int(time.time()))
    return {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery_id,
            "X-MLflow-Timestamp": timestamp, "X-MLflow-Signature": signature(SECRET, delivery_id, timestamp, body)}  # fmt: skip


def post_raw(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_bad_signed_bodies_get_400_naming_the_problem(receiver):
    for body, problem in [
        (b'{"entity": "model_version_alias", "action": "created", "data": ["fraud"]}', "data must be a JSON object"),
        (b'{"entity": "model_version_alias", "action": "created", "data": "fraud"}', "data must be a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'"just a string"', "expected a JSON object"),
        (b'{"entity": "model_version_alias", "action": "created", "data": {"name": 7, "alias": "x"}}', "strings"),
    ]:
        status, reply = post_raw(receiver.url, body, signed_bytes(body))
        assert status == 400 and problem in json.loads(reply)["error"], (status, reply)
    lone_surrogate = b'{"entity": "\\ud800", "action": "created"}'  # valid JSON, not encodable as UTF-8
    status, reply = post_raw(receiver.url, lone_surrogate, signed_bytes(lone_surrogate))
    assert status == 200 and json.loads(reply)["status"] == "ignored", reply
    body = event("fraud")
    huge_timestamp = {**signed_bytes(body), "X-MLflow-Timestamp": "9" * 400}
    huge_timestamp["X-MLflow-Signature"] = signature(
        SECRET, huge_timestamp["X-MLflow-Delivery-Id"], huge_timestamp["X-MLflow-Timestamp"], body)
    assert post_raw(receiver.url, body, huge_timestamp)[0] == 403


def test_client_text_is_escaped_and_bounded_in_the_log(receiver, caplog):
    caplog.set_level(logging.INFO, logger="mlflow_triton")
    body = event("not-followed")  # signed, for a model that is not followed: logged, 200
    # Over the wire: what h11 lets through in a header (tabs, Latin-1 bytes such as NEL \x85,
    # a line break for str.splitlines), 10 KB long.
    raw_id = b"id\t\x85ERROR forged line" + b"z" * 10_000
    delivery_id, timestamp = raw_id.decode("latin-1"), str(int(time.time()))
    head = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"X-MLflow-Delivery-Id: " + raw_id + b"\r\nX-MLflow-Timestamp: " + timestamp.encode()
            + b"\r\nX-MLflow-Signature: " + signature(SECRET, delivery_id, timestamp, body).encode()
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")  # fmt: skip
    with socket.create_connection(address(receiver.url), timeout=10) as sock:
        sock.sendall(head + body)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    # Through the handler, as any transport would pass it: CR/LF and escape sequences.
    forged = "id\r\n2026-01-01 00:00:00,000 ERROR forged: rollout failed\x1b[2J"
    headers = {**signed_bytes(body), "X-MLflow-Delivery-Id": forged}
    headers["X-MLflow-Signature"] = signature(SECRET, forged, headers["X-MLflow-Timestamp"], body)
    assert receiver.handle(headers, body)[0] == 200
    lines = [r.getMessage() for r in caplog.records if "not-followed" in r.getMessage()]
    assert len(lines) == 2, lines
    for line in lines:
        assert len(line.splitlines()) == 1 and "\x1b" not in line and "\t" not in line and len(line) < 400, line
    assert "\\x85ERROR" in lines[0] and "(10021 chars)" in lines[0] and "\\r\\n2026" in lines[1]


def test_forged_deliveries_are_logged_at_a_bounded_rate(blocked_receiver, caplog):
    caplog.set_level(logging.WARNING, logger="mlflow_triton")
    body = event("fraud")
    for _ in range(60):
        assert post(blocked_receiver.url, body, signed_headers(body, secret="forged"))[0] == 403
    rejected = [r for r in caplog.records if r.getMessage().startswith("Rejected webhook")]
    assert len(rejected) == 10 and blocked_receiver.counts[403] == 60
