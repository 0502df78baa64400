"""The inputs a candidate is verified with, derived once, the same way for every logged model.

In order of preference:

1. **golden cases** logged with the model (:mod:`mlflow_triton.core.golden`): inputs and the
   eager model's outputs, compared without any local runtime;
2. the MLflow **input example**;
3. **zeros** shaped like the model's tensors, every dynamic axis 1. The tensors are what the
   flavor knows, wherever it knew them from (a named or unnamed tensor signature, a column
   signature, the ONNX graph, a Triton config), so no signature, or a signature without names,
   needs a path of its own.

Every case's batch is cut to ``max_batch_size`` (Triton refuses larger ones). The example also
feeds ``model_warmup`` (:mod:`mlflow_triton.triton_config.warmup`)::

    smoke = derive_smoke_inputs(model, io, max_batch_size=32, workdir=tmp)
    smoke.origin        # "golden", "input_example" or "zeros"
    smoke.cases[0].inputs
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from mlflow.exceptions import MlflowException

from mlflow_triton.core.golden import GoldenCases
from mlflow_triton.triton_config.tensors import NUMPY_DTYPES, ModelIO, as_arrays, provenance_entry

if TYPE_CHECKING:
    from mlflow_triton.flavors.source import LoggedModel

#: Tolerance of Triton's answer vs. the same file run locally.
SMOKE_RTOL = 1e-3
SMOKE_ATOL = 1e-5

Origin = Literal["golden", "input_example", "zeros"]


@dataclass(frozen=True)
class SmokeCase:
    """One request: inputs by MLflow name, and (golden cases) the expected outputs by MLflow name."""

    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class SmokeInputs:
    """The cases a candidate is verified with, where they came from, and their tolerances."""

    cases: tuple[SmokeCase, ...]
    origin: Origin
    rtol: float = SMOKE_RTOL
    atol: float = SMOKE_ATOL

    @property
    def example(self) -> dict[str, np.ndarray] | None:
        """The logged example's (or first golden case's) inputs, for ``model_warmup``; None for zeros."""
        return None if self.origin == "zeros" else self.cases[0].inputs


def _rows(arrays: dict[str, np.ndarray], max_batch_size: int) -> dict[str, np.ndarray]:
    if max_batch_size <= 0:
        return arrays
    return {k: v[:max_batch_size] if np.ndim(v) else v for k, v in arrays.items()}


def zeros(io: ModelIO) -> dict[str, np.ndarray]:
    """One request of zeros (empty strings for BYTES) shaped like ``io``'s inputs, every
    dynamic axis 1, keyed by MLflow name."""
    arrays = {}
    for spec in io.inputs:
        shape = [d if d > 0 else 1 for d in spec.shape]
        dtype = NUMPY_DTYPES[spec.triton_dtype]
        arrays[spec.source_name] = np.full(shape, b"", dtype=object) if spec.triton_dtype == "BYTES" else np.zeros(shape, dtype)
    return arrays


def golden_inputs(golden: GoldenCases, max_batch_size: int) -> SmokeInputs:
    """Golden cases as smoke inputs, each batch cut to ``max_batch_size``."""
    cases = tuple(
        SmokeCase(_rows(dict(inputs), max_batch_size), _rows(dict(outputs), max_batch_size))
        for inputs, outputs in golden
    )
    return SmokeInputs(cases, "golden", golden.rtol, golden.atol)


def derive_smoke_inputs(model: "LoggedModel | None", io: ModelIO, max_batch_size: int, workdir: Path) -> SmokeInputs:
    """The smoke inputs of a model with tensors ``io`` (see the module docstring).

    Args:
        model: the logged model whose golden cases or input example to use (None: zeros).
        workdir: where golden cases are downloaded.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE when the golden cases or the input example do
            not fit the model's inputs (the message names the fix); RESOURCE_DOES_NOT_EXIST
            when they cannot be read.
    """
    names = [spec.source_name for spec in io.inputs]
    golden = model.golden_cases(workdir) if model is not None else None
    if golden is not None:
        missing = sorted(set(names) - set(golden.inputs[0]))
        if missing:
            raise MlflowException.invalid_parameter_value(
                f"The golden outputs of {model.model_uri} lack input(s) {missing} of the model "
                f"(inputs {names}). Log the model again with matching golden outputs."
            )
        return golden_inputs(golden, max_batch_size)
    example = model.load_input_example() if model is not None else None
    if example is not None:
        try:
            arrays = as_arrays(example, [provenance_entry(spec) for spec in io.inputs])
        except (MlflowException, ValueError, TypeError) as err:  # names, or values numpy cannot cast
            reason = err.message if isinstance(err, MlflowException) else f"{type(err).__name__}: {err}."
            raise MlflowException.invalid_parameter_value(
                f"The input example of {model.model_uri} does not fit the model: {reason} "
                "Log a matching input_example, or deploy with -C verify=false."
            ) from err
        return SmokeInputs((SmokeCase(_rows(arrays, max_batch_size)),), "input_example")
    return SmokeInputs((SmokeCase(zeros(io)),), "zeros")
