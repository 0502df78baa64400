"""Request batching shared by the Python-based stand-ins for Triton's C++ backends.

Triton's dynamic batcher hands ``execute`` several requests at once. Like the C++
``onnxruntime`` and ``pytorch`` backends, the stand-ins concatenate them along the
batch axis, run the model once and split the outputs back per request.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

RunFn = Callable[[list[np.ndarray]], Sequence[np.ndarray]]


def execute_batched(
    requests: list, input_names: list[str], output_names: list[str], batched: bool, run: RunFn
) -> list:
    """Run ``run`` once over all ``requests`` and return one response per request."""
    per_request = [
        [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in input_names]
        for request in requests
    ]
    if not batched:
        return [_respond(run(arrays), output_names) for arrays in per_request]
    sizes = [arrays[0].shape[0] for arrays in per_request]
    merged = [np.concatenate([arrays[i] for arrays in per_request]) for i in range(len(input_names))]
    outputs = run(merged)
    responses, start = [], 0
    for size in sizes:
        responses.append(_respond([out[start : start + size] for out in outputs], output_names))
        start += size
    return responses


def _respond(outputs: Sequence[np.ndarray], output_names: list[str]):
    # pb_utils.Tensor serializes a view with its base buffer's size: hand it owned copies.
    tensors = [
        pb_utils.Tensor(name, np.array(out, copy=True))
        for name, out in zip(output_names, outputs, strict=True)
    ]
    return pb_utils.InferenceResponse(output_tensors=tensors)
