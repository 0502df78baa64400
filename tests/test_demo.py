"""`make demo` as a newcomer runs it: it succeeds and prints its story, not the libraries' chatter.

The demo starts its own stack (as `make demo` does), so this file costs one more stack start,
a 3-epoch training and two deployments (about 40 s on a quiet 2-core machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from noise import chatter

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"

pytestmark = pytest.mark.integration


def test_demo_tells_its_story_quietly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRITON_", "AWS_"))}
    result = subprocess.run(
        [sys.executable, str(DEMO)], cwd=tmp_path, env={**env, "PYTHONUNBUFFERED": "1"},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # The registered model by name and version, not the logged model's id (models:/m-...)
    assert "[demo] registered models:/tiny-regressor/1 (alias @production)" in result.stdout
    assert "max |triton - eager|" in result.stdout and "[demo] done" in result.stdout
    assert chatter(output) == []  # no progress bar, third-party warning, banner, run URL or traceback
