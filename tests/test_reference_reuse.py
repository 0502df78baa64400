"""Verification computed once: a rollback and a replica heal verify against the reference
outputs stored beside the version when it was published, with no local runtime, no MLflow and
not one byte of the model read by the publisher (counted).

Each check runs with the local runtime (``run_reference``) and the MLflow model resolution
made to fail, and with every repository read of a model file counted; a tampered reference
then refuses the same rollback, which shows the stored outputs are what is compared.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.deployments import get_deploy_client
from test_promotion_support import CPU, assert_every_replica_serves, register

from mlflow_triton.fleet.server import TritonServer
from mlflow_triton.promotion import load_spec, rollback
from mlflow_triton.repository.layout import REFERENCE_FOLDER
from mlflow_triton.repository.s3_store import S3Store
from mlflow_triton.repository.stores import open_store
from mlflow_triton.rollout import verification
from mlflow_triton.rollout.publisher import ModelPublisher
from mlflow_triton.settings.deployment import DeploymentConfig

pytestmark = pytest.mark.integration
MODEL_FILES = ("model.onnx",)


def test_rollback_and_heal_verify_against_the_stored_reference(stack, unique_name, monkeypatch):
    # Published with the local runtime: that is when the reference is computed and stored.
    a, b = register(unique_name, 71, 72)
    client = get_deploy_client("triton:/" + ",".join(stack.triton_urls))
    store = open_store(stack.model_repository, stack.s3_endpoint)
    try:
        client.create_deployment(unique_name, f"models:/{unique_name}/1", config=CPU)
        client.update_deployment(unique_name, f"models:/{unique_name}/2", config=CPU)
        for version in (1, 2):
            manifest = json.loads(store.read_bytes(f"{unique_name}/{version}/{REFERENCE_FOLDER}/golden.json"))
            assert manifest["model_file_digest"] and manifest["cases"], manifest

        with monkeypatch.context() as guarded:
            read = _guard(guarded)
            spec = load_spec(require_models=False, config=CPU)
            assert rollback(spec, unique_name).changed
            assert_every_replica_serves(stack.triton_urls, unique_name, a)
            # a replica restarted empty: the next repair reloads it, verified again
            TritonServer(stack.triton_urls[1]).unload_model(unique_name)
            publisher = ModelPublisher.for_config(DeploymentConfig.from_dict(CPU), stack.triton_urls)
            assert publisher.repair(unique_name, 1).reloaded == [stack.triton_urls[1]]
            assert read == []  # not one byte of a model file
        assert_every_replica_serves(stack.triton_urls, unique_name, a)

        # The stored outputs are what is compared: tampered, the same rollback is refused.
        key = f"{unique_name}/2/{REFERENCE_FOLDER}/case-0.npz"
        with np.load(_download(store, key)) as case:
            arrays = {k: case[k] + (1.0 if k.startswith("output.") else 0.0) for k in case.files}
        _upload_npz(store, key, arrays)
        with monkeypatch.context() as guarded:
            _guard(guarded)
            with pytest.raises(Exception, match="differs from the golden output"):
                rollback(load_spec(require_models=False, config=CPU), unique_name, to_version=2)
        assert_every_replica_serves(stack.triton_urls, unique_name, a)
    finally:
        client.delete_deployment(unique_name)


def _guard(patch) -> list:
    """Count the model-file reads of the publisher; forbid the local runtime and MLflow."""
    read: list = []
    download, open_object = S3Store.download_file, S3Store.open_object

    def counted_download(self, key, path):
        size = download(self, key, path)
        if key.rpartition("/")[2] in MODEL_FILES:
            read.append((key, size))
        return size

    def counted_open(self, key, *args, **kwargs):
        if key.rpartition("/")[2] in MODEL_FILES:
            read.append((key, "opened"))
        return open_object(self, key, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("a stored reference needs neither the local runtime nor MLflow")

    patch.setattr(S3Store, "download_file", counted_download)
    patch.setattr(S3Store, "open_object", counted_open)
    patch.setattr(verification, "run_reference", forbidden)
    patch.setattr(verification, "resolve_model", forbidden)
    return read


def _download(store, key):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "case.npz"
    store.download_file(key, path)
    return path


def _upload_npz(store, key, arrays):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "case.npz"
    np.savez(path, **arrays)
    store.upload_file(path, key)
