"""Shared fixtures: one real local stack (moto S3, mlflow server, two tritonserver replicas).

The stack is session-scoped: it starts once (~15 s) and every integration test shares it,
each test using its own model names. ``stack_env`` exports the stack's variables
(AWS credentials, endpoints, MLFLOW_TRACKING_URI, TRITON_URL, TRITON_MODEL_REPO) so that
code under test finds the servers exactly as a user's shell would.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

# Offline machine: MLflow's telemetry thread fails and races os.environ while requests reads it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest

from mlflow_triton.local.stack import LocalStack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    workdir = Path(tmp_path_factory.mktemp("stack"))
    local = LocalStack(workdir, replicas=2)
    local.start()
    try:
        with local.exported_env():
            yield local
    finally:
        local.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A model name no other test uses (Triton-valid: letters, digits, '-' and '_')."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    return f"{base}-{uuid.uuid4().hex[:6]}"
