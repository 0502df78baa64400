"""Request splitting: any number of rows become requests Triton accepts, and back.

Triton refuses a request of more rows than the model's ``max_batch_size`` and never splits
one itself (its maintainers point to the client: server issues #6120, #3527, #4888). Its
HTTP endpoint also refuses bodies over ``--http-max-input-size`` (64 MiB by default), and a
gRPC message cannot exceed 2 GiB. :func:`plan_requests` cuts the rows into consecutive
slices that respect all three; :func:`reassemble` concatenates the answers in input order,
so the caller gets the dtypes and shapes one large request would have given.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from mlflow.exceptions import MlflowException

MiB = 1024 * 1024
#: Triton's default ``--http-max-input-size``.
HTTP_MAX_INPUT_BYTES = 64 * MiB
#: gRPC's message size limit (tritonclient and tritonserver both raise theirs to INT32_MAX).
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1
#: Room left in each request for what is not tensor data: the JSON header of an HTTP request
#: (names, shapes, parameters), the protobuf fields of a gRPC one.
HEADER_ALLOWANCE = 64 * 1024


def default_request_bytes(protocol: str) -> int:
    """The tensor bytes one request may carry by default over ``protocol`` (``http``/``grpc``)."""
    limit = GRPC_MAX_MESSAGE_BYTES if protocol == "grpc" else HTTP_MAX_INPUT_BYTES
    return limit - HEADER_ALLOWANCE


def row_bytes(array: np.ndarray) -> np.ndarray:
    """Bytes each row of ``array`` takes on the wire (axis 0 = rows).

    Fixed-size dtypes: itemsize times the row's elements. BYTES (object/str arrays): each
    element travels as a 4-byte length and its bytes (UTF-8 for ``str``), as
    ``tritonclient.utils.serialize_byte_tensor`` writes it.
    """
    rows = array.shape[0]
    if array.dtype.kind not in "OSU":
        return np.full(rows, array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)), dtype=np.int64)
    flat = array.reshape(rows, -1)
    sizes = np.fromiter(
        (sum(4 + len(v.encode() if isinstance(v, str) else bytes(v)) for v in row) for row in flat),
        dtype=np.int64, count=rows,
    )  # fmt: skip
    return sizes


def plan_requests(
    arrays: Mapping[str, np.ndarray], max_batch_size: int, max_request_bytes: int
) -> list[slice]:
    """Consecutive row slices, each at most ``max_batch_size`` rows and ``max_request_bytes``.

    Args:
        arrays: the checked inputs (same number of rows on axis 0 when batching).
        max_batch_size: the served config's; 0 means no batch axis: one request.
        max_request_bytes: tensor bytes a request may carry (see :func:`default_request_bytes`).

    Returns:
        ``[slice(0, 16), slice(16, 32), ...]`` covering every row in order; ``[slice(None)]``
        for a model without batching.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE when one row (or the whole request of a model
            without batching) is larger than ``max_request_bytes``, with the sizes and the fix.
    """
    if max_batch_size <= 0:
        size = sum(int(row_bytes(a[np.newaxis]).sum()) for a in arrays.values())
        if size > max_request_bytes:
            raise _too_large("The request", size, max_request_bytes, batched=False)
        return [slice(None)]
    per_row = sum(row_bytes(a) for a in arrays.values())
    rows = len(per_row)
    if rows and int(per_row.max()) > max_request_bytes:
        worst = int(np.argmax(per_row))
        raise _too_large(f"Row {worst}", int(per_row[worst]), max_request_bytes, batched=True)
    total = np.cumsum(per_row)
    slices, start = [], 0
    while start < rows:
        before = int(total[start - 1]) if start else 0
        fits = int(np.searchsorted(total, before + max_request_bytes, side="right"))
        stop = min(start + max_batch_size, fits, rows)
        slices.append(slice(start, stop))
        start = stop
    return slices


def _too_large(what: str, size: int, limit: int, batched: bool) -> MlflowException:
    fix = (
        "Raise the server's --http-max-input-size and pass max_request_bytes, or use gRPC "
        "(grpc://host:port URLs, 2 GiB messages)"
    )
    if not batched:
        fix += ", or deploy with max_batch_size > 0 so that rows can be split across requests"
    return MlflowException.invalid_parameter_value(
        f"{what} is {size / MiB:.1f} MiB of tensor data, more than one request may carry "
        f"({limit / MiB:.1f} MiB). {fix}."
    )


def reassemble(parts: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The outputs of consecutive requests joined on the batch axis, in request order."""
    if len(parts) == 1:
        return {name: parts[0][name] for name in names}
    return {name: np.concatenate([part[name] for part in parts]) for name in names}
