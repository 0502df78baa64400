"""The README's CLI walkthrough, run verbatim against `mlflow-triton dev`.

The commands are read from README.md (the bash block after the ``walkthrough`` marker), so a
README edit that breaks them breaks this test. `mlflow-triton dev` runs as a subprocess, as a
user would start it; its printed ``export`` lines are the only thing the commands get.
"""

from __future__ import annotations

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

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- walkthrough: tested by tests/test_dev_walkthrough.py -->"
BIN = Path(sys.executable).parent


def walkthrough_commands() -> str:
    """The bash block right after the marker in README.md."""
    text = README.read_text()
    assert MARKER in text, "README.md lost the walkthrough marker"
    match = re.search(r"```bash\n(.*?)```", text[text.index(MARKER):], re.S)
    assert match, "no ```bash block after the walkthrough marker"
    return match.group(1)


def test_readme_walkthrough_block_is_found():
    commands = walkthrough_commands()
    assert "mlflow-triton dev" in commands and "mlflow deployments create -t triton" in commands


def read_exports(process: subprocess.Popen, timeout_s: float) -> dict[str, str]:
    """Parse ``export KEY=VALUE`` lines from the dev stack's stdout until its UI line."""
    exports: dict[str, str] = {}
    done = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
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
    try:
        exports = read_exports(dev, timeout_s=300)
        up = time.monotonic()
        assert {"MLFLOW_TRACKING_URI", "TRITON_URL", "TRITON_MODEL_REPO", "AWS_ENDPOINT_URL_S3"} <= set(exports)
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", rest], cwd=tmp_path, env={**env, **exports},
            capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        print(f"dev stack up (with the example model) in {up - started:.1f}s; walkthrough in {time.monotonic() - up:.1f}s")
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert '"scores"' in result.stdout  # predict answered with the model's output
        assert "READY" in result.stdout  # get shows the state per replica
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
