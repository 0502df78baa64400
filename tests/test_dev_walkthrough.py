"""The README's CLI walkthrough and Python API snippet, run verbatim against `mlflow-triton dev`.

The commands are read from README.md (the bash block after the ``walkthrough`` marker, the
python block after the ``python-api`` marker), so a README edit that breaks them breaks this
test. `mlflow-triton dev` runs as a subprocess, as a user would start it; its printed
``export`` lines are the only thing the commands get. Their output must be quiet: no
progress bar, no third-party warning, no traceback (:func:`noise.chatter`).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from noise import chatter

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- walkthrough: tested by tests/test_dev_walkthrough.py -->"
PYTHON_MARKER = "<!-- python-api: tested by tests/test_dev_walkthrough.py -->"
BIN = Path(sys.executable).parent


def readme_block(marker: str, language: str) -> str:
    """The ``language`` code block right after ``marker`` in README.md."""
    text = README.read_text()
    assert marker in text, f"README.md lost the marker {marker}"
    match = re.search(rf"```{language}\n(.*?)```", text[text.index(marker):], re.S)
    assert match, f"no ```{language} block after {marker}"
    return match.group(1)


def walkthrough_commands() -> str:
    """The bash block right after the walkthrough marker in README.md."""
    return readme_block(MARKER, "bash")


def test_readme_walkthrough_block_is_found():
    commands = walkthrough_commands()
    assert "mlflow-triton dev" in commands and "mlflow deployments create -t triton" in commands
    snippet = readme_block(PYTHON_MARKER, "python")
    assert "get_deploy_client(" in snippet and "update_deployment(" in snippet


def test_chatter_finds_what_issue_18_reported_and_nothing_else():
    reported = [
        "Downloading artifacts: 100%|██████████| 1/1 [00:00<00:00, 21.44it/s]",
        "/x/pytorch_lightning/utilities/_pytree.py:21: `isinstance(treespec, LeafSpec)` is deprecated, use ...",
        "2026/12/04 23:20:10 WARNING mlflow.utils.requirements_utils: Found torch version (2.13.0+cpu) ...",
        "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
        "🏃 View run stylish-ray-837 at: http://127.0.0.1:51625/#/experiments/1/runs/fc54",
        "/x/y.py:3: FutureWarning: something",
    ]
    assert chatter("\n".join(reported)) == reported
    clean = 'onnx deployment fraud is created\n{"predictions": {"scores": [[0.1, 0.2, 0.3]]}}\nname: fraud\n'
    assert chatter(clean) == []


def read_exports(process: subprocess.Popen, timeout_s: float, printed: list[str]) -> dict[str, str]:
    """Parse ``export KEY=VALUE`` lines from the dev stack's stdout until its UI line (every
    line read goes to ``printed``)."""
    exports: dict[str, str] = {}
    done = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            printed.append(line)
            if line.startswith("export "):
                key, _, value = line[len("export "):].strip().partition("=")
                exports[key] = shlex.split(value)[0]
            if line.startswith("# MLflow UI:"):
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout_s), f"mlflow-triton dev printed no exports within {timeout_s}s"
    return exports


@pytest.mark.integration
def test_readme_walkthrough_against_mlflow_triton_dev(tmp_path):
    block = walkthrough_commands()
    # The block's first command starts the stack (another terminal, for a user); the rest run here.
    start, _, rest = block.partition("\n")
    assert start.split("#")[0].split() == ["mlflow-triton", "dev"], start
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    for key in ("TRITON_URL", "TRITON_MODEL_REPO", "MLFLOW_TRACKING_URI"):  # nothing from the session stack
        env.pop(key, None)
    dev = subprocess.Popen(
        [str(BIN / "mlflow-triton"), "dev", "--workdir", str(tmp_path / "dev")], env=env,
        stdout=subprocess.PIPE, stderr=open(tmp_path / "dev.err", "w"), text=True,
    )  # fmt: skip
    started = time.monotonic()
    printed: list[str] = []
    try:
        exports = read_exports(dev, timeout_s=300, printed=printed)
        up = time.monotonic()
        assert {"MLFLOW_TRACKING_URI", "TRITON_URL", "TRITON_MODEL_REPO", "AWS_ENDPOINT_URL_S3"} <= set(exports)
        # stdout holds only what to paste (the venv's activation, export lines) and comments:
        # MLflow's run URLs stay out
        assert all(line.startswith(("export ", "#", "source ")) for line in printed), printed
        assert f"source {BIN / 'activate'}\n" in printed  # tests run in the venv: how to get its `mlflow`
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", rest], cwd=tmp_path, env={**env, **exports},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        walked = time.monotonic()
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert '"scores"' in result.stdout  # predict answered with the model's output
        assert "READY" in result.stdout  # get shows the state per replica
        assert chatter(result.stdout + result.stderr) == []  # no progress bar, warning or traceback
        # The Python API snippet, verbatim, in a fresh interpreter with the same exports.
        snippet = subprocess.run(
            [sys.executable, "-c", readme_block(PYTHON_MARKER, "python")], cwd=tmp_path,
            env={**env, **exports}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        print(f"dev stack up (with the example model) in {up - started:.1f}s; walkthrough in "
              f"{walked - up:.1f}s; Python snippet in {time.monotonic() - walked:.1f}s")  # fmt: skip
        assert snippet.returncode == 0, f"{snippet.stdout[-3000:]}\n{snippet.stderr[-3000:]}"
        scores, servers = map(ast.literal_eval, snippet.stdout.strip().splitlines()[-2:])
        assert len(scores) == 1 and len(scores[0]) == 3
        # get: the repository's versions on the replica, 2 serving, 1 kept (unloaded or unloading:
        # Triton unloads asynchronously) for a rollback
        [(url, replica)] = servers.items()
        assert url == exports["TRITON_URL"] and replica["versions"]["2"] == "READY"
        assert sorted(replica["versions"]) == ["1", "2"] and replica["versions"]["1"] in ("UNLOADING", "UNAVAILABLE")
        assert chatter(snippet.stdout + snippet.stderr) == []
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            code = dev.wait(90)
        except subprocess.TimeoutExpired:
            dev.kill()
            raise
    assert code == 0, (tmp_path / "dev.err").read_text()[-3000:]
    for url in (exports["TRITON_URL"], exports["MLFLOW_TRACKING_URI"], exports["AWS_ENDPOINT_URL_S3"]):
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # everything it started is gone
            urllib.request.urlopen(url, timeout=2)
