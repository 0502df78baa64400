"""The servers of the local stack: moto S3, an MLflow tracking server, and tritonserver from the
``nvidia-pytriton`` wheel with the Python stand-ins for its absent C++ backends."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Mapping, Sequence

logger = logging.getLogger(__name__)

from mlflow_triton.local.processes import ManagedProcess, free_port

BACKENDS_DIR = Path(__file__).parent / "backends"
PYTHON_BASED_BACKENDS = ("onnxruntime", "pytorch")
RESPONSE_CACHE_BYTES = 8 * 1024 * 1024


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
    # MLflow 3's job runner (huey consumers for GenAI scorers) adds five processes and ~1 GB
    # that the registry, artifacts and webhooks this stack serves never use.
    env = {**(os.environ if env is None else env), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return ManagedProcess("mlflow server", argv, f"http://127.0.0.1:{port}/health", log_path, env)


def pytriton_root() -> Path:
    """Where the ``nvidia-pytriton`` wheel keeps ``tritonserver`` and its libraries."""
    import pytriton

    return Path(pytriton.__file__).parent


def python_environment_bin() -> Path:
    """The ``bin`` folder of the Python environment running the stack (a virtualenv's ``bin``)."""
    return Path(sys.prefix) / "bin"


def triton_environment(base: Mapping[str, str]) -> dict[str, str]:
    """Environment in which the wheel's ``tritonserver`` and its Python stub run in this Python.

    The stub (``triton_python_backend_stub``) embeds libpython and starts it with pybind11
    2.10's ``PyConfig_InitIsolatedConfig`` (the 3.11+ stubs of the wheel): it ignores
    ``PYTHONPATH``, ``PYTHONHOME`` and the user site. What it does not ignore is ``PATH``:
    CPython's path configuration resolves the program ``python3`` on ``PATH`` and, next to it,
    reads ``pyvenv.cfg``, so ``sys.prefix`` and ``site-packages`` are those of the first
    environment on ``PATH``. This is how ``EXECUTION_ENV_PATH`` works on every Triton (the
    launcher sources the environment's ``bin/activate``), how pytriton runs this very stub,
    and why, in a Triton container, models see the server's Python (``/usr/bin/python3``).
    Putting this Python's ``bin`` first therefore gives every Python-backend model, unchanged,
    this environment's packages rather than the base interpreter's: numpy<2 above all, since
    the stub's pybind11 2.10 predates NumPy 2 and, with numpy 2, returns every output empty. ``LD_LIBRARY_PATH`` names the wheel's libraries and this
    interpreter's libpython (the stub links ``libpython3.X.so``).
    """
    if not (python_environment_bin() / "python3").exists():
        logger.warning(
            "%s has no python3: Python-backend models will run in the stub's base interpreter, "
            "not in this environment", python_environment_bin(),
        )  # fmt: skip
    root = pytriton_root()
    libs = [str(root.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env = dict(base)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [*libs, base.get("LD_LIBRARY_PATH", "")]))
    search_path = [str(python_environment_bin()), base.get("PATH", os.defpath)]
    env["PATH"] = os.pathsep.join(filter(None, search_path))
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
