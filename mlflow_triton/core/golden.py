"""Golden outputs: verification inputs and the eager model's outputs, logged beside a model.

The export callback (``lightning_callbacks``) writes them into the MLflow model directory, so
a rollout can verify what Triton answers without torch or onnxruntime in the verifying
process. The format, version 1, is a folder ``golden/`` next to ``MLmodel``::

    golden/golden.json   {"format": "mlflow-triton-golden", "version": 1,
                          "rtol": 0.001, "atol": 1e-05,
                          "inputs": ["tokens"], "outputs": ["scores"],
                          "cases": [{"file": "case-0.npz"}, {"file": "case-1.npz"}]}
    golden/case-0.npz    numpy .npz (no pickles): "input.<name>" and "output.<name>" arrays

Names are the MLflow signature's tensor names. Each case is one request: every input batch
first, the outputs those inputs give with the full-precision (fp32) eager model. A served
answer passes when ``|served - golden| <= atol + rtol * |golden|`` element-wise. Cases may
differ in batch size and in every other dynamic axis (e.g. two sequence lengths).

Only numpy is needed to read them (the rollout fetches the folder with the MLflow model,
:meth:`mlflow_triton.flavors.source.LoggedModel.golden_cases`)::

    cases = GoldenCases.load(folder)
    for inputs, outputs in cases: ...

A served answer is compared with :func:`mlflow_triton.core.tolerance.compare_outputs`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

#: Folder of the golden files inside the MLflow model directory.
GOLDEN_DIR = "golden"
#: The manifest file inside :data:`GOLDEN_DIR`.
MANIFEST_FILE = "golden.json"
FORMAT_NAME = "mlflow-triton-golden"
FORMAT_VERSION = 1


@dataclass
class GoldenCases:
    """Requests and their expected answers.

    Attributes:
        inputs: one ``{input name: array}`` per case.
        outputs: one ``{output name: array}`` per case (eager, full precision).
        rtol: relative tolerance a served answer must meet.
        atol: absolute tolerance a served answer must meet.
    """

    inputs: list[dict[str, np.ndarray]]
    outputs: list[dict[str, np.ndarray]]
    rtol: float
    atol: float

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.outputs) or not self.inputs:
            raise ValueError(
                f"golden outputs need one output set per input set and at least one case, "
                f"got {len(self.inputs)} input and {len(self.outputs)} output sets."
            )

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        return iter(zip(self.inputs, self.outputs, strict=True))

    def __len__(self) -> int:
        return len(self.inputs)

    def save(self, directory: Path) -> Path:
        """Write the manifest and one ``.npz`` per case into ``directory``.

        Returns:
            The manifest's path.
        """
        directory.mkdir(parents=True, exist_ok=True)
        cases = []
        for index, (inputs, outputs) in enumerate(self):
            name = f"case-{index}.npz"
            arrays = {f"input.{k}": np.ascontiguousarray(v) for k, v in inputs.items()}
            arrays.update({f"output.{k}": np.ascontiguousarray(v) for k, v in outputs.items()})
            np.savez(directory / name, **arrays)
            cases.append({"file": name})
        manifest = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "rtol": self.rtol,
            "atol": self.atol, "inputs": list(self.inputs[0]), "outputs": list(self.outputs[0]),
            "cases": cases,
        }  # fmt: skip
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps(manifest, indent=1))
        return path

    @classmethod
    def load(cls, directory: Path) -> "GoldenCases":
        """Read what :meth:`save` wrote.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE when the folder is not golden outputs
                of a known version, or a case lacks a declared tensor.
        """
        try:
            manifest = json.loads((directory / MANIFEST_FILE).read_text())
        except (OSError, ValueError) as err:
            raise MlflowException(
                f"{directory / MANIFEST_FILE} is not a readable golden-output manifest: {err}",
                error_code=INVALID_PARAMETER_VALUE,
            ) from err
        if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
            raise MlflowException(
                f"{directory / MANIFEST_FILE} has format {manifest.get('format')!r} version "
                f"{manifest.get('version')!r}; this mlflow-triton reads {FORMAT_NAME!r} version "
                f"{FORMAT_VERSION}. Upgrade mlflow-triton or re-log the model.",
                error_code=INVALID_PARAMETER_VALUE,
            )
        inputs, outputs = [], []
        for case in manifest["cases"]:
            with np.load(directory / case["file"], allow_pickle=False) as data:
                try:
                    inputs.append({k: data[f"input.{k}"] for k in manifest["inputs"]})
                    outputs.append({k: data[f"output.{k}"] for k in manifest["outputs"]})
                except KeyError as err:
                    raise MlflowException(
                        f"golden case {case['file']} lacks tensor {err}",
                        error_code=INVALID_PARAMETER_VALUE,
                    ) from err
        return cls(inputs, outputs, float(manifest["rtol"]), float(manifest["atol"]))
