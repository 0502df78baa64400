"""The verification's local reference run: the model file run by its own runtime.

A smoke test compares Triton's answers with the same file run locally by its flavor
(:meth:`mlflow_triton.flavors.base.Flavor.run_reference`: onnxruntime for ONNX, ``torch.jit``
for TorchScript). The runtime must hold the weights; the publisher must not: a model larger
than :data:`IN_PROCESS_MAX_BYTES` is run in a child process, so the publishing process stays at
the same few hundred MB whether the model is 10 MB or 20 GB::

    outputs = run_reference(ONNX, Path("model.onnx"), [("x", x)], ["y"])

The child is ``python -m mlflow_triton.rollout.reference_run SPEC.json``; inputs and outputs travel as
``.npz`` files next to the spec.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from mlflow_triton.flavors.base import Flavor
from mlflow_triton.flavors.registry import get as get_flavor

#: Models (with their external data) up to this size are run in the publishing process.
IN_PROCESS_MAX_BYTES = 32 * 1024 * 1024
#: How long the child may take (load + one inference) before the run counts as failed.
CHILD_TIMEOUT_S = 1800
#: The child's niceness: below tritonserver's loads, which the publish waits for first.
CHILD_NICENESS = 10


class ReferenceRunFailed(RuntimeError):
    """The local runtime could not run the model (not a verdict on Triton)."""


def model_bytes(model_file: Path) -> int:
    """The model file and everything beside it (ONNX external data)."""
    return sum(p.stat().st_size for p in model_file.parent.iterdir() if p.is_file())


def run_reference(
    flavor: Flavor, model_file: Path, inputs: Sequence[tuple[str, np.ndarray]], outputs: Sequence[str],
    in_process_max_bytes: int = IN_PROCESS_MAX_BYTES,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Run ``model_file`` on ``inputs`` (name, array; positional for TorchScript) and return
    ``outputs`` by name.

    Raises:
        ReferenceRunFailed: the runtime (or the child running it) failed.
    """
    if model_bytes(model_file) <= in_process_max_bytes:
        return flavor.run_reference(model_file, inputs, outputs)
    with tempfile.TemporaryDirectory(prefix="mlflow-triton-reference-") as tmp:
        folder = Path(tmp)
        np.savez(folder / "inputs.npz", **{f"input{i}": array for i, (_, array) in enumerate(inputs)})
        spec = {"flavor": flavor.name, "model_file": str(model_file), "names": [n for n, _ in inputs], "outputs": list(outputs)}
        (folder / "spec.json").write_text(json.dumps(spec))
        try:
            done = subprocess.run(
                [sys.executable, "-m", "mlflow_triton.rollout.reference_run", str(folder / "spec.json")],
                capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
            )  # fmt: skip
        except subprocess.TimeoutExpired as err:
            raise ReferenceRunFailed(f"the reference run took more than {CHILD_TIMEOUT_S} s") from err
        if done.returncode != 0:
            raise ReferenceRunFailed(f"the reference run exited with {done.returncode}: {done.stderr[-2000:]}")
        with np.load(folder / "outputs.npz") as saved:
            return {name: saved[f"output{i}"] for i, name in enumerate(outputs)}


def main(spec_path: str) -> None:
    # It overlaps the staging load: where the publisher shares CPUs with tritonserver (the
    # local stack, a CI runner) the load it waits for goes first, the reference is ready anyway.
    os.nice(CHILD_NICENESS)
    folder = Path(spec_path).parent
    spec = json.loads(Path(spec_path).read_text())
    with np.load(folder / "inputs.npz") as saved:
        inputs = [(name, saved[f"input{i}"]) for i, name in enumerate(spec["names"])]
    results = get_flavor(spec["flavor"]).run_reference(Path(spec["model_file"]), inputs, spec["outputs"])
    np.savez(folder / "outputs.npz", **{f"output{i}": results[name] for i, name in enumerate(spec["outputs"])})


if __name__ == "__main__":
    main(sys.argv[1])
