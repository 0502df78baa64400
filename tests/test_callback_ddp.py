"""The export callback under real DDP: 2 CPU processes, gloo, a slow upload on rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).with_name("ddp_train.py")
SLOW_UPLOAD_S = 5.0
PG_TIMEOUT_S = 4.0  # shorter than the upload: a rank held at a collective during it fails


def test_ddp_rank_zero_exports_once_per_best_and_nobody_waits_for_the_upload(stack, unique_name, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPT.parents[1]), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), unique_name, "--slow-upload", str(SLOW_UPLOAD_S),
         "--pg-timeout", str(PG_TIMEOUT_S), "--epochs", "2"],
        env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    ranks = {r: json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)}
    assert ranks[0]["pid"] != ranks[1]["pid"]  # two real processes

    client = MlflowClient()
    versions = client.search_model_versions(f"name='{unique_name}'")
    assert ranks[1]["exports"] == 0 and ranks[1]["registered_version"] is None
    # rank 0 exported each new best once (2 epochs: at most 2), and nothing again at fit end
    assert 1 <= ranks[0]["exports"] == len(versions) <= 2
    best = ranks[0]["best_model_path"]
    assert best == ranks[1]["best_model_path"] == ranks[0]["last_exported"]
    assert Path(best).is_file()
    aliased = client.get_model_version_by_alias(unique_name, "best")
    assert aliased.version == ranks[0]["registered_version"] == str(len(versions))
    run_tags = client.get_run(aliased.run_id).data.tags
    assert run_tags["best_model_path"] == best
    # measured, not asserted: how long each export hook held the ranks (upload: SLOW_UPLOAD_S)
    print(f"export hook seconds, rank 0: {ranks[0]['hook_seconds']}, rank 1: {ranks[1]['hook_seconds']}")
