"""The embedded local stack: a moto S3 server, an MLflow tracking server and tritonserver.

Everything binds to free loopback ports, waits for health and is stopped by the pid it
was started with. Used by ``make demo``, the test suite and the benchmarks::

    with LocalStack(tmp_dir) as stack:
        stack.env            # AWS_*, MLFLOW_TRACKING_URI and TRITON_* for clients
        stack.triton_urls    # ["http://127.0.0.1:PORT", ...]

The ``tritonserver`` binary comes from the ``nvidia-pytriton`` wheel (CPU-only, built with
S3 support and the Python backend). Its C++ ``onnxruntime``/``pytorch`` backends are absent,
so the stack installs the Python-based stand-ins from ``mlflow_triton.local.backends``
under those backend names: Triton then serves exactly the config.pbtxt that a GPU Triton
would serve with its C++ backends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mlflow_triton.local.environ import preserved_environ
from mlflow_triton.local.processes import ManagedProcess, free_port
from mlflow_triton.local.requirements import require_local_extra
from mlflow_triton.local.servers import (
    make_backend_dir,
    mlflow_server,
    moto_s3,
    tritonserver,
)  # fmt: skip

logger = logging.getLogger(__name__)

AWS_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "mlflow-triton-local",
    "AWS_SECRET_ACCESS_KEY": "mlflow-triton-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MLFLOW_ARTIFACTS_BUCKET = "mlflow-artifacts"


@dataclass
class LocalStack:
    """Start moto S3, an MLflow server and ``replicas`` tritonservers sharing one S3 repository.

    Args:
        workdir: where logs, the sqlite store and MLflow artifacts go.
        replicas: number of tritonserver processes reading the same repository.
        bucket: S3 bucket created for the Triton model repository.
        prefix: key prefix of the repository inside ``bucket``.
        with_mlflow: also start an MLflow tracking server.
        mlflow_artifacts: ``"s3"`` keeps MLflow artifacts in the same S3 server (bucket
            ``mlflow-artifacts``), so publishing copies them server-side; ``"local"`` proxies
            them through the MLflow server into a local directory.
    """

    workdir: Path
    replicas: int = 1
    bucket: str = "triton-models"
    prefix: str = "repo"
    with_mlflow: bool = True
    mlflow_artifacts: str = "s3"
    processes: list[ManagedProcess] = field(default_factory=list)
    s3_port: int = 0
    mlflow_port: int = 0

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def model_repository(self) -> str:
        """The repository as the plugin sees it."""
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def triton_repository(self) -> str:
        """The repository as tritonserver sees it (endpoint inside the URI)."""
        return f"s3://{self.s3_endpoint}/{self.bucket}/{self.prefix}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def tritons(self) -> list[ManagedProcess]:
        return [p for p in self.processes if p.name.startswith("tritonserver")]

    @property
    def triton_urls(self) -> list[str]:
        return [p.http_url for p in self.tritons]  # type: ignore[attr-defined]

    @property
    def env(self) -> dict[str, str]:
        """Variables a client needs to use this stack (S3 credentials, endpoints, URIs)."""
        env = {
            **AWS_TEST_CREDENTIALS,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "TRITON_URL": ",".join(self.triton_urls),
            "TRITON_MODEL_REPO": self.model_repository,
        }
        if self.with_mlflow:
            env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        return env

    @contextlib.contextmanager
    def exported_env(self) -> Iterator[dict[str, str]]:
        """Export :attr:`env` into ``os.environ`` for the duration, then restore it."""
        values = self.env
        with preserved_environ(values):
            os.environ.update(values)
            yield values

    def start(self) -> "LocalStack":
        """Start every server and wait until each is healthy (stops them all if one fails).

        Raises:
            ModuleNotFoundError: the ``[local]`` extra is not installed (nothing started).
        """
        require_local_extra(self.with_mlflow)
        self.workdir.mkdir(parents=True, exist_ok=True)
        base_env = {"MLFLOW_DISABLE_TELEMETRY": "true", **os.environ, **AWS_TEST_CREDENTIALS}
        try:
            self.s3_port = free_port()
            s3 = moto_s3(self.s3_port, self.workdir / "logs" / "moto.log")
            self.processes.append(s3)
            s3.start()
            self.create_repository()
            if self.with_mlflow:
                self.mlflow_port = free_port()
                artifact_root = None
                if self.mlflow_artifacts == "s3":
                    self.create_bucket(MLFLOW_ARTIFACTS_BUCKET)
                    artifact_root = f"s3://{MLFLOW_ARTIFACTS_BUCKET}/"
                server = mlflow_server(
                    self.mlflow_port, self.workdir / "mlflow", self.workdir / "logs" / "mlflow.log",
                    env={**base_env, "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint},
                    artifact_root=artifact_root,
                )  # fmt: skip
                self.processes.append(server)
            backend_dir = make_backend_dir(Path(tempfile.mkdtemp(prefix="backends-", dir=self.workdir)))
            tritons = [
                tritonserver(
                    self.triton_repository, backend_dir,
                    self.workdir / "logs" / f"tritonserver-{i}.log", base_env,
                )  # fmt: skip
                for i in range(self.replicas)
            ]
            for i, triton in enumerate(tritons):
                triton.name = f"tritonserver-{i}"
            self.processes.extend(tritons)
            for process in self.processes[1:]:
                process.launch()
            for process in self.processes[1:]:
                process.wait_healthy(180.0)
        except BaseException:
            self.stop()
            raise
        return self

    def s3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, **_boto_credentials())

    def create_bucket(self, name: str) -> None:
        self.s3_client().create_bucket(Bucket=name)

    def create_repository(self) -> None:
        """Create the bucket and a folder marker: tritonserver refuses an empty prefix."""
        self.create_bucket(self.bucket)
        self.s3_client().put_object(Bucket=self.bucket, Key=f"{self.prefix}/", Body=b"")

    def restart(self, process: ManagedProcess) -> None:
        """Restart one of the stack's processes with the same arguments."""
        process.stop()
        process.start()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
    }
