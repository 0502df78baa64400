"""Both daemons can run for months: 2,000 reconciliations each, under a 256-descriptor limit,
leave descriptors, threads and memory where they were after the first 200.

``watch`` and ``serve-webhooks`` run as processes (``prlimit --nofile=256``) with the real
reconciliation: a registry (MLflow on sqlite, no server), a model repository (a directory)
and two stub Triton replicas (:mod:`stub_triton`) that tritonclient's real HTTP client talks
to. Each round is an ``unchanged`` reconciliation: the alias is resolved, the repository
read, every replica asked (statistics, then readiness, from the reconciliation's threads).
Before the gevent hubs of ended threads were destroyed (issue 21), each round left two
descriptors behind and ``watch`` died of ``EMFILE`` after about 120 rounds at this limit.
Usage is sampled between rounds (:func:`resting_usage`): a lone sample that caught a round in
flight once read 6 descriptors "grown" in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow import MlflowClient
from mlflow_globals import tracking_uri
from stub_triton import StubTriton
from test_promotion_support import ALIAS, CPU, register
from test_webhooks import SECRET, event, post, signed_headers

from mlflow_triton import promotion
from mlflow_triton.local.stack import free_port

ROUNDS = 2000
WARMUP_ROUNDS = 200
NOFILE = 256
#: Growth allowed between the warm-up sample and the end: a leak of one descriptor or one
#: thread per 100 rounds, or 8 KB per round, would exceed these.
MAX_FD_GROWTH = 4
MAX_THREAD_GROWTH = 2
MAX_RSS_GROWTH = 16 * 1024 * 1024
SAMPLES = 50
MODEL = "soak"


@dataclass
class Usage:
    fds: int
    threads: int
    rss: int


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """A published deployment: registry on sqlite, repository in a directory, two stub replicas."""
    root = tmp_path_factory.mktemp("soak")
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    with tracking_uri(tracking), StubTriton() as first, StubTriton() as second:
        mlflow.set_experiment(experiment_id=MlflowClient().create_experiment(
            "soak", artifact_location=(root / "artifacts").as_uri()))  # fmt: skip
        (root / "repository").mkdir()
        register(MODEL, 3)
        MlflowClient().set_registered_model_alias(MODEL, ALIAS, "1")
        options = {"models": [MODEL], "alias": ALIAS, "repository": str(root / "repository"),
                   "triton": f"{first.url},{second.url}", "config": CPU, "smoke_test": False}  # fmt: skip
        report = promotion.sync(promotion.load_spec(**options))
        assert [m.action for m in report.models] == ["published"], [m.error for m in report.models]
        argv = ["--model", MODEL, "--alias", ALIAS, "--repo", options["repository"],
                "--triton", options["triton"], "--no-smoke-test", "-C", "instance_kind=cpu"]  # fmt: skip
        yield argv, {**os.environ, "MLFLOW_TRACKING_URI": tracking}, root


def limited(*args: str) -> list[str]:
    """``mlflow-triton ARGS`` under ``prlimit --nofile=256:256``."""
    command = [sys.executable, "-m", "mlflow_triton.cli", *args]
    if shutil.which("prlimit"):
        return ["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--", *command]
    exec_limited = (  # same effect without util-linux: set the limit, then become the CLI
        "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({0}, {0})); "
        "os.execv(sys.executable, sys.argv[1:])"
    ).format(NOFILE)
    return [sys.executable, "-c", exec_limited, *command]


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "healthz", timeout=10) as response:
        return json.loads(response.read())


def resting_usage(pid: int) -> Usage:
    """The daemon's usage between rounds: the least of :data:`SAMPLES` samples 10 ms apart.

    Rounds run back to back, so a single sample may catch one in flight, with its worker
    thread and its connections to the replicas and the registry open (up to 6 descriptors
    and 3 threads more, measured). What a round leaks stays behind after it, so it raises
    the least sample too."""
    process = psutil.Process(pid)
    samples = []
    for _ in range(SAMPLES):
        samples.append(Usage(process.num_fds(), process.num_threads(), process.memory_info().rss))
        time.sleep(0.01)
    return Usage(*(min(getattr(s, field) for s in samples) for field in ("fds", "threads", "rss")))


def soak(argv: list[str], env: dict, log: Path, url: str, count: str, drive) -> tuple[Usage, Usage]:
    """Run the daemon until ``/healthz``'s ``count`` reaches :data:`ROUNDS`; resting usage at
    warm-up and at the end. ``drive(health)`` runs after each poll (a pause, or the next delivery)."""
    with open(log, "wb") as stderr:
        process = subprocess.Popen(limited(*argv), env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    samples: list[Usage] = []
    try:
        deadline = time.monotonic() + 600
        for target in (WARMUP_ROUNDS, ROUNDS):
            done = -1
            while done < target:
                assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"{done} rounds in 600 s:\n{log.read_text()[-3000:]}"
                try:
                    state = health(url)
                except (urllib.error.URLError, ConnectionError):  # not listening yet
                    time.sleep(0.2)
                    continue
                done = state[count]
                drive(state)
            samples.append(resting_usage(process.pid))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    return samples[0], samples[1]


def assert_flat(warm: Usage, end: Usage, what: str) -> None:
    figures = f"{what}: after {WARMUP_ROUNDS} rounds {warm}, after {ROUNDS} {end}"
    print(figures)
    assert end.fds - warm.fds <= MAX_FD_GROWTH, figures
    assert end.threads - warm.threads <= MAX_THREAD_GROWTH, figures
    assert end.rss - warm.rss <= MAX_RSS_GROWTH, figures


def test_watch_runs_2000_rounds_with_flat_descriptors_threads_and_memory(promoted):
    argv, env, root = promoted
    port = free_port()
    warm, end = soak(
        ["watch", *argv, "--interval", "0.001", "--listen", f"127.0.0.1:{port}"], env,
        root / "watch.log", f"http://127.0.0.1:{port}/", "rounds", drive=lambda health: time.sleep(0.05),
    )  # fmt: skip
    assert_flat(warm, end, "watch")
    assert "unchanged (registry version 1 serves as Triton version 1)" in (root / "watch.log").read_text()


def test_webhook_receiver_runs_2000_reconciles_with_flat_descriptors_threads_and_memory(promoted):
    argv, env, root = promoted
    port = free_port()
    url = f"http://127.0.0.1:{port}/"

    def deliver(health: dict) -> None:
        """The next alias event once the previous one is being reconciled (each one counts)."""
        if health["queued"]:
            time.sleep(0.002)
            return
        body = event(MODEL)
        status, reply = post(url, body, signed_headers(body))
        assert status == 202 and reply["status"] == "queued", reply

    warm, end = soak(
        ["serve-webhooks", *argv, "--port", str(port)], {**env, "MLFLOW_TRITON_WEBHOOK_SECRET": SECRET},
        root / "webhooks.log", url, "reconciles", drive=deliver,
    )  # fmt: skip
    assert_flat(warm, end, "serve-webhooks")
