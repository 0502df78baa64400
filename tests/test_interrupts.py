"""Honest interrupts (mlflow_triton.rollout.interrupts): SIGINT/SIGTERM during a rollout.

Unit tests of the mechanism (deferral, the command's edge, cooperative stops) run in this
process, sending signals to it. The integration tests interrupt a real ``mlflow deployments
update`` at each phase, in a child process that patches one step to send itself SIGINT right
after it (as tests/test_crash_consistency.py does with SIGKILL) and then runs MLflow's own CLI,
so that the exit status and stderr are MLflow's CLI's. Each case then checks that the printed
outcome, the exit status, what Triton serves and the serving history agree.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import click
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from test_promotion_support import ALIAS, CPU, logged_model

from mlflow_triton.cli.commands import cli
from mlflow_triton.fleet.server import TritonServer
from mlflow_triton.plugin.client import TritonDeploymentClient
from mlflow_triton.repository.history import ServingHistory
from mlflow_triton.repository.layout import LEASE_FILE, staging_name
from mlflow_triton.rollout import interrupts
from mlflow_triton.rollout.interrupts import Cancellation, Interrupted, Outcome
from mlflow_triton.rollout.publisher import ModelPublisher
from mlflow_triton.settings.deployment import DeploymentConfig


def send(signum: int = signal.SIGINT) -> None:
    """Deliver ``signum`` to this process now (the main thread runs its handler at once)."""
    signal.raise_signal(signum)


# -- the mechanism ---------------------------------------------------------------------------------
def test_critical_defers_sigint_until_the_block_is_done():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.critical("the test switch"):
            send()
            steps.append("config written")
            send()  # a second Ctrl-C is deferred too, and delivered once
            steps.append("serving recorded")
    assert steps == ["config written", "serving recorded"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_critical_defers_sigterm_and_hands_it_to_the_handler_in_place():
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with interrupts.critical("the test switch"):
            send(signal.SIGTERM)
            assert received == []
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_failed_critical_block_raises_its_error_and_the_edge_exits_with_the_signal():
    with pytest.raises(Interrupted) as caught:
        with interrupts.reported("fraud", serving_now=lambda: 1):
            with interrupts.critical("the test switch"):
                send()
                raise MlflowException("'fraud' version 2 was refused at the switch; version 1 still serves.")
    assert caught.value.exit_code == 130
    assert str(caught.value) == "Interrupted by SIGINT: 'fraud' version 2 was refused at the switch; version 1 still serves."


def test_reported_turns_sigterm_into_an_outcome_naming_what_serves():
    with pytest.raises(Interrupted) as caught:
        with interrupts.reported("fraud", serving_now=lambda: 3):
            send(signal.SIGTERM)
    assert caught.value.signum == signal.SIGTERM and caught.value.exit_code == 143
    assert str(caught.value) == "Interrupted by SIGTERM: 'fraud' serves version 3"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_reported_keeps_the_outcome_a_rollout_gave():
    told = Interrupted.of(KeyboardInterrupt(), "fraud", False, 2, detail="candidate version 3 removed")
    with pytest.raises(Interrupted) as caught:
        with interrupts.reported("fraud", serving_now=lambda: pytest.fail("no need to read")):
            raise told
    assert caught.value is told
    assert str(told) == "Interrupted by SIGINT: nothing changed; 'fraud' still serves version 2 (candidate version 3 removed)"


def test_reported_leaves_a_programs_own_handler_and_an_ignored_signal_alone():
    received = []
    own = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for `cmd &` in a script
    try:
        with interrupts.reported("fraud", serving_now=lambda: 1):
            send(signal.SIGTERM)
            send(signal.SIGINT)
            with interrupts.critical("the test switch"):
                send(signal.SIGINT)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, own)
        signal.signal(signal.SIGINT, ignored)


def test_under_a_click_command_the_outcome_is_one_line_and_exit_130_not_aborted():
    @click.command()
    def update() -> None:
        with interrupts.reported("fraud", serving_now=lambda: 1):
            raise Interrupted.of(KeyboardInterrupt(), "fraud", False, known=False)

    result = CliRunner().invoke(update, [])
    assert result.exit_code == 130, result.output
    assert result.output.strip() == "Interrupted by SIGINT: nothing changed; 'fraud' still serves version 1"
    assert "Aborted" not in result.output


def test_cooperative_requests_a_stop_that_workers_see_at_their_next_checkpoint():
    seen = []

    def rollout(cancel: Cancellation) -> str:
        interrupts.checkpoint(cancel, "uploading")  # before the signal: goes on
        started.set()
        stopped.wait(10)
        with interrupts.critical("the switch"):
            interrupts.checkpoint(cancel, "inside the switch")  # a switch in progress finishes
            seen.append("switched")
        interrupts.checkpoint(cancel, "the next switch")
        return "not stopped"

    started, stopped = threading.Event(), threading.Event()
    with interrupts.cooperative() as cancel, ThreadPoolExecutor(1) as pool:
        future = pool.submit(rollout, cancel)
        assert started.wait(10)
        send(signal.SIGTERM)  # handled in this (main) thread: no exception here
        send(signal.SIGTERM)  # a second one only says it is still waiting
        stopped.set()
        with pytest.raises(Interrupted) as caught:
            future.result(10)
    assert seen == ["switched"] and cancel.signum == signal.SIGTERM
    assert caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize(
    "outcome, text",
    [
        (Outcome("fraud", True, 3, detail="the switch had begun and was finished"),
         "'fraud' now serves version 3, recorded in its history (the switch had begun and was finished)"),
        (Outcome("fraud", False, None), "nothing changed; 'fraud' is not deployed"),
        (Outcome("fraud", False, known=False), "nothing changed for 'fraud'"),
        (Outcome("fraud", None, known=False), "what 'fraud' serves could not be read (`mlflow deployments get` shows it)"),
    ],
)  # fmt: skip
def test_outcome_lines(outcome, text):
    assert outcome.describe() == text


# -- a real `mlflow deployments update`, interrupted at each phase -------------------------------------
#: Each phase: (the step the child sends itself SIGINT after, whether the switch happened).
#: Every case updates a deployment serving version 2 (versions 1 and 2 published) to version 3.
PHASES = {
    "transfer": False,  # the model is in NAME/3/, its provenance is not
    "staging_load": False,  # sent while the replica loads the staging model
    "switch": True,  # right after the `staged` history record: deferred until it is recorded
    "prune": True,  # after version 1's provenance is deleted (keep_versions=2)
}
SEEDS = (41, 42, 43)

#: The child: patch one step to SIGINT this process right after it, then run MLflow's own CLI.
CHILD = textwrap.dedent(
    """
    import os, signal, sys

    phase, deployment, *args = sys.argv[1:]

    def interrupt():
        sys.stderr.write(f"[test] SIGINT after {phase}\\n"); sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGINT)

    def after(owner, method, when=lambda *a, **k: True, before=False):
        original = getattr(owner, method)
        def patched(*a, **k):
            if before and when(*a, **k):
                interrupt()
            result = original(*a, **k)
            if not before and when(*a, **k):
                interrupt()
            return result
        setattr(owner, method, patched)

    if phase == "transfer":
        from mlflow_triton.rollout import transaction
        after(transaction, "transfer")
    elif phase == "staging_load":  # sent from the loading thread; the main thread gets it
        from mlflow_triton.fleet.server import TritonServer
        after(TritonServer, "load_model", when=lambda self, name: name.startswith("_mlflow-triton-staging."), before=True)
    elif phase == "switch":
        from mlflow_triton.repository.history import ServingHistory
        after(ServingHistory, "save", when=lambda self, store: self.events[-1]["event"] == "staged")
    elif phase == "prune":
        from mlflow_triton.repository.provenance import provenance_key
        from mlflow_triton.repository.s3_store import S3Store
        after(S3Store, "delete", when=lambda self, key: key == provenance_key(deployment, 1))
    from mlflow.cli import cli

    cli(args, prog_name="mlflow")
    """
)


class Child:
    """One `mlflow deployments update` child, its stderr in a file (no pipe to fill)."""

    def __init__(self, phase: str, deployment: str, url: str, registered: str, folder) -> None:
        self.phase, self.deployment = phase, deployment
        self.stderr_path = folder / f"{phase}.stderr"
        args = ["deployments", "update", "-t", f"triton:/{url}", "--name", deployment,
                "-m", f"models:/{registered}/3", "-C", "instance_kind=cpu"]  # fmt: skip
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", CHILD, phase, deployment, *args],
                stdout=subprocess.DEVNULL, stderr=stderr, env=dict(os.environ),
            )  # fmt: skip

    def finish(self) -> tuple[int, str]:
        try:
            returncode = self.process.wait(timeout=480)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return returncode, self.stderr_path.read_text()


@pytest.fixture(scope="module")
def registered(stack) -> str:
    """A registered model with three versions (Scorer seeds 41, 42, 43)."""
    import mlflow

    name = f"interrupts-{os.getpid()}"
    for seed in SEEDS:
        mlflow.register_model(logged_model(seed), name)
    return name


@pytest.fixture(scope="module")
def serving_two(stack, registered):
    """``{case: deployment}``: one deployment per case, each serving registry version 2 as
    repository version 2 on the first replica (prepared at once); deleted afterwards."""
    url = stack.triton_urls[0]
    names = {case: f"int-{case.replace('_', '-')}-{os.getpid()}" for case in [*PHASES, "sync", "rollback"]}

    def prepare(name: str) -> None:
        client = TritonDeploymentClient(f"triton:/{url}")
        client.create_deployment(name, f"models:/{registered}/1", config=CPU)
        client.update_deployment(name, f"models:/{registered}/2", config=CPU)

    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(prepare, names.values()))
    yield names
    for name in names.values():
        publisher(stack).delete(name)


def outcome_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("Interrupted by SIGINT: ")]
    assert len(lines) == 1, output[-4000:]
    return lines[0]


def assert_serves_only(stack, name: str, version: int, recorded_as: str = "publish") -> None:
    """Triton (the target's replica), the repository and the history agree: ``version`` serves."""
    url, repository = stack.triton_urls[0], publisher(stack)
    with TritonServer(url) as server:
        ready = [v for v in (1, 2, 3) if server.is_model_ready(name, v)]
        staging_loaded = [e for e in server.repository_index() if e.get("name") == staging_name(name) and e.get("state")]
    assert ready == [version], ready
    assert repository.read_state(name).serving_version == version
    events = repository.read_history(name).events
    assert (events[-1]["event"], events[-1]["version"], events[-1]["via"]) == ("serving", version, recorded_as), events
    assert repository.store.list_dir(f"{staging_name(name)}/") == ([], [])
    assert all(e["state"] == "UNAVAILABLE" for e in staging_loaded), staging_loaded
    assert repository.store.read_bytes(f"{name}/{LEASE_FILE}") is None


@pytest.mark.integration
@pytest.mark.parametrize("phase", PHASES)
def test_an_interrupted_update_says_what_serves(stack, registered, serving_two, phase, tmp_path):
    name, switched = serving_two[phase], PHASES[phase]
    returncode, stderr = Child(phase, name, stack.triton_urls[0], registered, tmp_path).finish()
    assert f"[test] SIGINT after {phase}" in stderr, stderr[-4000:]
    assert returncode == 130, stderr[-4000:]
    assert "Aborted!" not in stderr
    line = outcome_line(stderr)
    said = int(re.search(r"serves version (\d+)", line).group(1))
    expected = 3 if switched else 2
    assert said == expected, line
    assert ("now serves" in line, "nothing changed" in line) == (switched, not switched), line
    assert_serves_only(stack, name, expected)
    if not switched:  # the candidate is gone and never appeared in the history
        assert "candidate version 3 removed" in line
        assert publisher(stack).read_state(name).versions == [1, 2]
        assert all(e["version"] != 3 for e in publisher(stack).read_history(name).events)


# -- mlflow-triton sync and rollback, in this process ---------------------------------------------------
@pytest.mark.integration
def test_sync_stops_each_rollout_before_its_switch_and_exits_130(stack, registered, serving_two, monkeypatch):
    """SIGINT while the staging model loads (in sync's worker thread): the rollout stops at
    its next safe point, before the switch; the report and the exit status say so."""
    name, url = serving_two["sync"], stack.triton_urls[0]
    MlflowClient().set_registered_model_alias(registered, ALIAS, "3")
    load_model = TritonServer.load_model

    def load_and_interrupt(self, model):
        if model == staging_name(name):
            os.kill(os.getpid(), signal.SIGINT)  # the main thread's handler asks for a stop
        return load_model(self, model)

    monkeypatch.setattr(TritonServer, "load_model", load_and_interrupt)
    result = CliRunner().invoke(
        cli, ["sync", "--model", f"{registered}={name}", "--alias", ALIAS, "--triton", url, "-C", "instance_kind=cpu"]
    )
    assert result.exit_code == 130, result.output
    assert f"{name}: interrupted" in result.stdout
    assert f"nothing changed; '{name}' still serves version 2 (candidate version 3 removed)" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        f"Interrupted by SIGINT: stopped before the switch, nothing changed for: {name}"
    )
    assert_serves_only(stack, name, 2)
    assert publisher(stack).read_state(name).versions == [1, 2]


@pytest.mark.integration
def test_rollback_interrupted_during_its_switch_finishes_it_and_exits_130(stack, serving_two, monkeypatch):
    name, url = serving_two["rollback"], stack.triton_urls[0]
    save = ServingHistory.save

    def save_and_interrupt(self, store):
        save(self, store)
        if self.events[-1]["event"] == "staged":
            os.kill(os.getpid(), signal.SIGINT)  # deferred until the switch is recorded

    monkeypatch.setattr(ServingHistory, "save", save_and_interrupt)
    result = CliRunner().invoke(cli, ["rollback", name, "--triton", url, "-C", "instance_kind=cpu"])
    assert result.exit_code == 130, result.output
    assert outcome_line(result.stderr) == (
        f"Interrupted by SIGINT: '{name}' now serves version 1, recorded in its history (rolled back)"
    )
    assert_serves_only(stack, name, 1, recorded_as="rollback")


def publisher(stack) -> ModelPublisher:
    """The repository and the first replica (the one every case targets)."""
    return ModelPublisher.for_config(DeploymentConfig.from_dict(CPU), stack.triton_urls[:1])
