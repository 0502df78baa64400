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

Only numpy and MLflow are needed to read them::

    cases = GoldenCases.download(source.download_uri, tmp_dir)   # None when not logged
    for inputs, outputs in cases: ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

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
        return iter(zip(self.inputs, self.outputs))

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

    @classmethod
    def download(cls, model_uri: str, destination: Path) -> "GoldenCases | None":
        """The golden outputs of the MLflow model directory at ``model_uri``, or None.

        Args:
            model_uri: the model directory's artifact URI (``ModelSource.download_uri``).
            destination: an empty local folder to download into.

        Raises:
            MlflowException: RESOURCE_DOES_NOT_EXIST when the artifacts cannot be listed or
                fetched; INVALID_PARAMETER_VALUE when they are malformed.
        """
        import mlflow

        uri = f"{model_uri.rstrip('/')}/{GOLDEN_DIR}"
        try:
            listing = mlflow.artifacts.list_artifacts(artifact_uri=uri)
            if not any(info.path.rpartition("/")[2] == MANIFEST_FILE for info in listing):
                return None
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination)))
        except MlflowException:
            raise
        except Exception as err:
            raise MlflowException(
                f"Cannot fetch the golden outputs at {uri}: {err}", error_code=RESOURCE_DOES_NOT_EXIST
            ) from err
        return cls.load(local)


def within_tolerance(expected: np.ndarray, actual: np.ndarray, rtol: float, atol: float) -> tuple[bool, float]:
    """Whether ``actual`` matches ``expected`` element-wise (NaN equals NaN), and the max abs diff.

    Compares in float64, so an fp16 answer is checked against fp32 golden values.
    """
    want, got = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    if want.shape != got.shape:
        return False, float("inf")
    if want.size == 0:
        return True, 0.0
    diff = np.where(np.isnan(want) & np.isnan(got), 0.0, np.abs(got - want))
    diff = np.where(np.isnan(diff), np.inf, diff)
    ok = bool(np.all(diff <= atol + rtol * np.abs(np.nan_to_num(want))))
    return ok, float(diff.max())


def check_case(
    expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], rtol: float, atol: float
) -> list[str]:
    """Problems of one served answer against its golden outputs (empty when it passes)."""
    problems = []
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            problems.append(f"output {name!r} is missing")
            continue
        ok, diff = within_tolerance(want, got, rtol, atol)
        if np.shape(got) != np.shape(want):
            problems.append(f"output {name!r} has shape {np.shape(got)}, golden {np.shape(want)}")
        elif not ok:
            problems.append(
                f"output {name!r} differs from the golden output: max abs diff {diff:.3g} "
                f"(rtol={rtol:g}, atol={atol:g})"
            )
    return problems

