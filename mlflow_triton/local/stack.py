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
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from mlflow_triton.local.requirements import require_local_extra

logger = logging.getLogger(__name__)

AWS_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "mlflow-triton-local",
    "AWS_SECRET_ACCESS_KEY": "mlflow-triton-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BACKENDS_DIR = Path(__file__).parent / "backends"
PYTHON_BASED_BACKENDS = ("onnxruntime", "pytorch")
MLFLOW_ARTIFACTS_BUCKET = "mlflow-artifacts"
RESPONSE_CACHE_BYTES = 8 * 1024 * 1024


def free_port(host: str = "127.0.0.1", *also_free_on: str) -> int:
    """Return a TCP port that is free on ``host`` (and on each of ``also_free_on``) right now."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        try:
            for other in also_free_on:
                with socket.socket() as probe:
                    probe.bind((other, port))
            return port
        except OSError:
            continue


class ManagedProcess:
    """A child process in its own session, with a log file and an HTTP health check."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        health_url: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.health_url = health_url
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> "ManagedProcess":
        """Launch the process and wait until its health URL answers 200."""
        self.launch()
        self.wait_healthy(timeout_s)
        return self

    def launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        logger.info("%s is up (pid %d)", self.name, self.process.pid)
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not healthy after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the process group this object started (SIGTERM, then SIGKILL)."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout_s)
                return
            except subprocess.TimeoutExpired:
                continue


def moto_s3(port: int, log_path: Path) -> ManagedProcess:
    """A moto S3 server on ``127.0.0.1:port``."""
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return ManagedProcess("moto S3", argv, f"http://127.0.0.1:{port}/moto-api/", log_path)


def mlflow_server(
    port: int, root: Path, log_path: Path, env: Mapping[str, str] | None = None,
    artifact_root: str | None = None,
) -> ManagedProcess:
    """An ``mlflow server`` with a sqlite backend store on ``127.0.0.1:port``.

    Artifacts are proxied into ``root/artifacts``, or, with ``artifact_root="s3://bucket/"``,
    written by clients straight to S3 (``--no-serve-artifacts``), as many production setups do.
    """
    root.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    if artifact_root:
        argv += ["--default-artifact-root", artifact_root, "--no-serve-artifacts"]
    else:
        argv += ["--artifacts-destination", str(root / "artifacts")]
    # MLflow 3's server otherwise starts a job runner with about ten huey consumer processes
    # (~1.7 GB in all) for GenAI jobs that neither the plugin nor the dev stack uses.
    env = {**(os.environ if env is None else env), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return ManagedProcess("mlflow server", argv, f"http://127.0.0.1:{port}/health", log_path, env)


def pytriton_root() -> Path:
    """Where the ``nvidia-pytriton`` wheel keeps ``tritonserver`` and its libraries."""
    import pytriton

    return Path(pytriton.__file__).parent


def triton_environment(base: Mapping[str, str]) -> dict[str, str]:
    """Environment that lets the wheel's ``tritonserver`` and its Python stub start."""
    root = pytriton_root()
    libs = [str(root.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    python_path = sorted(set(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
    env = dict(base)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [*libs, base.get("LD_LIBRARY_PATH", "")]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*python_path, base.get("PYTHONPATH", "")]))
    return env


def make_backend_dir(target: Path) -> Path:
    """Build a Triton backend directory: the Python backend plus the Python-based stand-ins."""
    root = pytriton_root() / "tritonserver"
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in (root / "backends" / "python").iterdir():
        if source.is_file():
            shutil.copy2(source, python_dir / source.name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(root / "python_backend_stubs" / version / "triton_python_backend_stub", python_dir)
    for backend in PYTHON_BASED_BACKENDS:
        (target / backend).mkdir(exist_ok=True)
        shutil.copy2(BACKENDS_DIR / backend / "model.py", target / backend / "model.py")
        shutil.copy2(BACKENDS_DIR / "batching.py", target / backend / "batching.py")
    return target


def tritonserver(
    model_repository: str,
    backend_dir: Path,
    log_path: Path,
    env: Mapping[str, str],
    http_port: int | None = None,
    grpc_port: int | None = None,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
) -> ManagedProcess:
    """``tritonserver`` in explicit model-control mode on free loopback ports.

    Args:
        host: the loopback address HTTP and gRPC bind to (127.0.0.2, 127.0.0.3... give several
            replicas the same ports behind one name, as pods behind a headless Service).
        extra_args: more tritonserver flags, e.g. ``--load-model=*``.
    """
    http_port = http_port or free_port(host)
    grpc_port = grpc_port or free_port(host)
    argv = [
        str(pytriton_root() / "tritonserver" / "bin" / "tritonserver"),
        f"--model-repository={model_repository}",
        "--model-control-mode=explicit",
        f"--backend-directory={backend_dir}",
        f"--http-address={host}", f"--http-port={http_port}",
        f"--grpc-address={host}", f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--exit-timeout-secs=5",
        "--log-verbose=0",
        # A response cache, so that configs with `response_cache { enable: true }` load
        # (-C response_cache=true); the wheel ships the `local` cache implementation.
        f"--cache-directory={pytriton_root() / 'tritonserver' / 'caches'}",
        f"--cache-config=local,size={RESPONSE_CACHE_BYTES}",
        *extra_args,
    ]  # fmt: skip
    process = ManagedProcess(
        "tritonserver", argv, f"http://{host}:{http_port}/v2/health/ready", log_path,
        triton_environment(env),
    )  # fmt: skip
    process.http_url = f"http://{host}:{http_port}"  # type: ignore[attr-defined]
    process.grpc_url = f"{host}:{grpc_port}"  # type: ignore[attr-defined]
    return process


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
        saved = {key: os.environ.get(key) for key in values}
        os.environ.update(values)
        try:
            yield values
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

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
