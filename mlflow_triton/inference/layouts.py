"""Input layouts: what callers send, turned into one checked numpy array per model input.

Accepted (keys and columns may use the MLflow names or the Triton names):

* a dict of arrays or nested lists, ``{"features": x}``; a numpy array or list for a
  single-input model;
* a pandas DataFrame, as ``mlflow deployments predict --input-path`` builds it with
  ``pd.read_json``:

  - a column per input holding one row's value or list per cell. ``{"features": [[...], ...]}``
    and records ``[{"features": [...]}, ...]`` both read this way;
  - NVIDIA's plugin layout ``{"inputs": {"INPUT0": [[...]], ...}}``: one ``inputs`` column
    indexed by input names, each cell a whole tensor;
  - ``{"instances": [...]}`` / ``{"inputs": [...]}`` / ``{"dataframe_records": [...]}`` (MLflow
    serving's): one column of rows, each a value of the single input or a record of every input;
  - ``{"dataframe_split": {"columns": [...], "data": [...]}}`` (MLflow serving's, what
    ``DataFrame.to_dict(orient="split")`` gives): the frame it describes, read as above;
  - plain columns of numbers (``[{"a": 1, "b": 2}, ...]``, ``[[1, 2], ...]``) for a
    single-input model: the columns of its 2-D input.

Every array is checked against the served config before anything is sent: the error names
the input, what was given and the shape and dtype the config expects.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from mlflow.exceptions import MlflowException

from mlflow_triton.inference.served import ServedModel, ServedTensor

#: Single columns that hold one row per cell in MLflow serving's JSON layouts.
ROW_COLUMNS = ("instances", "inputs", "dataframe_records")
#: MLflow serving's split layout: a frame as ``{"columns": [...], "data": [...], "index": [...]}``.
SPLIT_KEY = "dataframe_split"
#: The column NVIDIA's mlflow-triton-plugin reads: indexed by input name, a tensor per cell.
NVIDIA_COLUMN = "inputs"
LAYOUTS_HINT = (
    "Send a dict keyed by input name, a column per input (records or columns JSON), "
    'NVIDIA\'s {"inputs": {NAME: tensor}} or, for a single input, a 2-D array.'
)


def input_arrays(inputs: Any, model: ServedModel) -> dict[str, np.ndarray]:
    """One checked array per input of ``model``, keyed by Triton name, from any accepted layout.

    Returns:
        ``{triton_name: array}`` with the served dtypes; with batching every array has the same
        number of rows on axis 0.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE naming the input and the expected shape and
            dtype, or the layout that was not understood.
    """
    raw = _by_input(inputs, model)
    arrays = {t.triton_name: _checked(raw[t.mlflow_name], t, model) for t in model.inputs}
    if model.batched:
        rows = {t.mlflow_name: arrays[t.triton_name].shape[0] for t in model.inputs}
        if len(set(rows.values())) > 1:
            raise MlflowException.invalid_parameter_value(
                f"The inputs of {model.name!r} have different numbers of rows {rows}: every "
                "input needs one entry per row."
            )
    return arrays


def _lookup(model: ServedModel) -> dict[str, ServedTensor]:
    """Each input under its MLflow name and its Triton name."""
    found = {t.triton_name: t for t in model.inputs}
    found.update({t.mlflow_name: t for t in model.inputs})
    return found


def _expected_names(model: ServedModel) -> list[str]:
    return [t.mlflow_name for t in model.inputs]


def _by_input(inputs: Any, model: ServedModel) -> dict[str, Any]:
    """``{mlflow_name: raw value}`` from whichever layout ``inputs`` uses."""
    import pandas as pd

    if isinstance(inputs, pd.DataFrame):
        return _from_frame(inputs, model)
    if isinstance(inputs, Mapping):
        return _from_mapping(inputs, model)
    if len(model.inputs) == 1 and inputs is not None and not isinstance(inputs, (str, bytes)):
        return {model.inputs[0].mlflow_name: inputs}
    raise MlflowException.invalid_parameter_value(
        f"Model {model.name!r} takes inputs {_expected_names(model)}; got {type(inputs).__name__}. "
        + LAYOUTS_HINT
    )


def _from_mapping(inputs: Mapping[str, Any], model: ServedModel) -> dict[str, Any]:
    lookup = _lookup(model)
    only_key = next(iter(inputs)) if len(inputs) == 1 else None
    if only_key == SPLIT_KEY and only_key not in lookup and isinstance(inputs[only_key], Mapping):
        return _from_frame(_split_frame(inputs[only_key]), model)
    rows = inputs[only_key] if only_key in ROW_COLUMNS and only_key not in lookup else None
    if isinstance(rows, list) and rows and all(isinstance(row, Mapping) for row in rows):
        return _from_frame(_records_frame(rows), model)  # MLflow serving's records, from Python
    nested = inputs.get(NVIDIA_COLUMN)
    if NVIDIA_COLUMN not in lookup and isinstance(nested, Mapping) and len(inputs) == 1:
        inputs = nested  # NVIDIA's {"inputs": {...}} as a Python dict
    found: dict[str, Any] = {}
    for key, value in inputs.items():
        if key in lookup:
            found[lookup[key].mlflow_name] = value
    missing = [name for name in _expected_names(model) if name not in found]
    if missing:
        raise MlflowException.invalid_parameter_value(
            f"Missing input(s) {missing} of model {model.name!r}: it takes "
            f"{_expected_names(model)}, got {sorted(map(str, inputs))}."
        )
    return found


def _from_frame(frame: Any, model: ServedModel) -> dict[str, Any]:
    lookup = _lookup(model)
    columns = {str(c): c for c in frame.columns}
    if list(columns) == [SPLIT_KEY] and SPLIT_KEY not in lookup:  # read by pd.read_json: a cell per part
        return _from_frame(_split_frame(dict(frame[SPLIT_KEY].items())), model)
    if list(columns) == [NVIDIA_COLUMN] and NVIDIA_COLUMN not in lookup and all(
        isinstance(i, str) for i in frame.index
    ):
        return _from_mapping(dict(frame[NVIDIA_COLUMN].items()), model)
    named = {t.mlflow_name: _column_of(t, columns) for t in model.inputs}
    if all(column is not None for column in named.values()):
        return {
            t.mlflow_name: _stack_rows(frame[named[t.mlflow_name]].tolist(), t, model) for t in model.inputs
        }
    if len(columns) == 1 and next(iter(columns)) in ROW_COLUMNS:
        cells = frame.iloc[:, 0].tolist()
        if cells and all(isinstance(c, Mapping) for c in cells):
            return _from_frame(_records_frame(cells), model)
    if len(model.inputs) == 1:
        tensor = model.inputs[0]
        if len(columns) == 1:  # one column of per-row values, whatever its name
            return {tensor.mlflow_name: _stack_rows(frame.iloc[:, 0].tolist(), tensor, model)}
        if not any(_holds_lists(frame[c]) for c in frame.columns):
            return {tensor.mlflow_name: frame.to_numpy()}  # the columns of one 2-D input
    raise MlflowException.invalid_parameter_value(
        f"DataFrame columns {list(columns)} do not name the inputs {_expected_names(model)} of "
        f"model {model.name!r}. " + LAYOUTS_HINT
    )


def _split_frame(split: Mapping[str, Any]) -> Any:
    """The DataFrame a ``dataframe_split`` document describes (``columns`` and ``data``)."""
    import pandas as pd

    return pd.DataFrame(split.get("data") or [], columns=split.get("columns"))


def _column_of(tensor: ServedTensor, columns: Mapping[str, Any]) -> Any:
    """The frame column holding ``tensor`` (MLflow name first, then Triton name), or None."""
    for name in (tensor.mlflow_name, tensor.triton_name):
        if name in columns:
            return columns[name]
    return None


def _records_frame(records: list[Mapping[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame.from_records(records)


def _holds_lists(column: Any) -> bool:
    return column.dtype.kind == "O" and any(isinstance(v, (list, tuple, np.ndarray)) for v in column.head(5))


def _stack_rows(cells: list[Any], tensor: ServedTensor, model: ServedModel) -> np.ndarray:
    """One row per cell, stacked on a new first axis."""
    if tensor.datatype == "BYTES" and cells and not isinstance(cells[0], (list, tuple, np.ndarray)):
        array = np.empty(len(cells), dtype=object)
        array[:] = cells  # one string per row; np.array would make a fixed-width str array
        return array
    try:
        return np.array(cells, dtype=object if tensor.datatype == "BYTES" else None)
    except ValueError as err:  # rows of different lengths
        raise MlflowException.invalid_parameter_value(
            f"Input {tensor.mlflow_name!r} of model {model.name!r}: the rows have different shapes "
            f"({err}); the served config expects {tensor.describe(model.batched)}."
        ) from err


def _checked(value: Any, tensor: ServedTensor, model: ServedModel) -> np.ndarray:
    """``value`` as an array of the served dtype and shape, or an error saying what is expected."""
    array = _with_dtype(value, tensor, model)
    if model.batched and tensor.dims == (1,) and array.ndim == 1:
        array = array.reshape(-1, 1)  # one value per row: travels as [rows, 1]
    expected = tensor.expected_shape(model.batched)
    matches = array.ndim == len(expected) and all(
        isinstance(e, str) or e == -1 or e == got for e, got in zip(expected, array.shape, strict=True)
    )
    if not matches:
        raise MlflowException.invalid_parameter_value(
            f"Input {tensor.mlflow_name!r} of model {model.name!r} has shape {list(array.shape)}; "
            f"the served config expects {tensor.describe(model.batched)}"
            + (f" (up to {model.max_batch_size} rows per request: more are split)." if model.batched else ".")
        )
    return np.ascontiguousarray(array)


def _with_dtype(value: Any, tensor: ServedTensor, model: ServedModel) -> np.ndarray:
    try:
        given = value if isinstance(value, np.ndarray) else np.asarray(value)
    except ValueError as err:  # nested lists of different lengths
        raise MlflowException.invalid_parameter_value(
            f"Input {tensor.mlflow_name!r} of model {model.name!r}: the rows have different shapes "
            f"({err}); the served config expects {tensor.describe(model.batched)}."
        ) from err
    wanted = tensor.numpy_dtype

    def refuse(reason: str, err: Exception | None = None) -> MlflowException:
        error = MlflowException.invalid_parameter_value(
            f"Input {tensor.mlflow_name!r} of model {model.name!r} is {given.dtype} ({reason}); "
            f"the served config expects {tensor.describe(model.batched)}."
        )
        error.__cause__ = err
        return error

    if tensor.datatype == "BYTES":
        if given.dtype.kind not in "OSU":
            raise refuse("not text or bytes")
        return given if given.dtype == object else given.astype(object)
    if given.dtype.kind in "OSU":
        try:
            return given.astype(wanted)
        except (TypeError, ValueError) as err:
            raise refuse("values that are not numbers", err) from err
    if given.dtype == wanted:
        return given
    if not np.can_cast(given.dtype, wanted, casting="same_kind"):
        raise refuse(f"cast it with .astype(numpy.{wanted.name}) if that is intended")
    return given.astype(wanted)
