"""`pip install mlflow-triton` without extras, in a fresh venv, as a new user installs it.

What the plugin alone must give: MLflow finds the ``triton`` target (``mlflow deployments help
-t triton``), every module of ``mlflow_triton`` imports (full ``mlflow``, torch, moto and the
tritonserver wheel are not installed), and what needs an extra says which one to install
(``import lightning_callbacks``, ``mlflow-triton dev``). The venv's size is the number the
README reports.

The venv is built with the machine's pip configuration (its package indexes and cache) and
``-c constraints.txt`` (the project's pins), from a copy of the distribution's files, so the
checkout gets no ``build/`` folder. It takes 1-4 minutes, almost all of it waiting on the
package index: pytest-xdist runs the other test files meanwhile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: What a source distribution holds (setup.cfg's packages, long_description).
DISTRIBUTION_FILES = ("pyproject.toml", "setup.cfg", "README.md", "constraints.txt", "mlflow_triton", "lightning_callbacks")
SIZE_MARKER = "<!-- install-size: measured by tests/test_install.py -->"
#: Every module of mlflow_triton imports without extras, except those that only run inside
#: Triton's Python backend (they import its ``triton_python_backend_utils``).
IMPORT_ALL = """
import importlib, pkgutil, mlflow_triton
for module in pkgutil.walk_packages(mlflow_triton.__path__, "mlflow_triton."):
    if module.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(module.name)
    except ModuleNotFoundError as err:
        if err.name != "triton_python_backend_utils":
            raise
print("imported", mlflow_triton.TritonDeploymentClient.__name__)
"""


def readme_size_mb() -> int:
    """The plugin-only venv size the README states after the size marker, in MB."""
    text = README.read_text()
    assert SIZE_MARKER in text, "README.md lost the install-size marker"
    match = re.search(r"\*\*(\d+) MB", text[text.index(SIZE_MARKER):])
    assert match, "no **N MB** after the install-size marker"
    return int(match.group(1))


def venv_size_mb(venv: Path) -> float:
    return sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, **kwargs)


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install -c constraints.txt <the project>`` and nothing else."""
    root = tmp_path_factory.mktemp("install")
    source = root / "mlflow-triton"
    source.mkdir()
    for name in DISTRIBUTION_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    installed = run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(source / "constraints.txt"), str(source)],
        env=env,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-4000:]
    return venv


def test_the_plugin_alone_installs_small_and_names_its_extras(plugin_venv: Path, tmp_path: Path):
    bin_dir = plugin_venv / "bin"
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    frozen = run([str(bin_dir / "python"), "-m", "pip", "freeze"], env=env).stdout
    distributions = {line.split("==")[0].split(" @ ")[0].lower() for line in frozen.splitlines() if line}
    assert "mlflow-skinny" in distributions
    assert not distributions & {"mlflow", "torch", "moto", "nvidia-pytriton", "scikit-learn", "scipy", "pyarrow"}

    helped = run([str(bin_dir / "mlflow"), "deployments", "help", "-t", "triton"], env=env, cwd=tmp_path)
    assert helped.returncode == 0 and "instance_kind" in helped.stdout, helped.stderr[-3000:]

    imported = run([str(bin_dir / "python"), "-c", IMPORT_ALL], env=env, cwd=tmp_path)
    assert imported.returncode == 0 and "imported TritonDeploymentClient" in imported.stdout, imported.stderr[-3000:]

    callbacks = run([str(bin_dir / "python"), "-c", "import lightning_callbacks"], env=env, cwd=tmp_path)
    assert callbacks.returncode == 1
    assert callbacks.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: lightning_callbacks needs torch, which is not installed: "
        "pip install 'mlflow-triton[lightning]'"
    )

    dev = run([str(bin_dir / "mlflow-triton"), "dev", "--workdir", str(tmp_path / "dev")], env=env, cwd=tmp_path)
    assert dev.returncode == 1
    error = [line for line in dev.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "moto[server]" in error[0] and error[0].endswith("pip install 'mlflow-triton[local]'")
    assert "Traceback" not in dev.stderr and not (tmp_path / "dev").exists()  # refused before anything started

    size = venv_size_mb(plugin_venv)
    print(f"plugin-only venv: {size:.0f} MB, {len(distributions)} distributions")
    # The README's figure stays true: a dependency that brings back full mlflow (989 MB) fails here.
    assert size <= readme_size_mb() * 1.25, f"{size:.0f} MB: update the README's figure, or drop the dependency"
