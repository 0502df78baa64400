"""The one tolerance comparison: its NaN and infinity semantics, and its messages."""

from __future__ import annotations

import numpy as np
import pytest

from mlflow_triton.core.tolerance import compare_outputs, within_tolerance

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "expected, actual, ok",
    [
        ([1.0, 2.0], [1.0005, 2.0], True),  # within rtol 1e-3
        ([1.0, 2.0], [1.01, 2.0], False),
        ([NAN, 1.0], [NAN, 1.0], True),  # NaN where the reference has NaN
        ([NAN, 1.0], [0.0, 1.0], False),  # a number where the reference has NaN
        ([0.0, 1.0], [NAN, 1.0], False),  # NaN where the reference has a number
        ([INF, -INF], [INF, -INF], True),  # the same infinity
        ([INF, 1.0], [-INF, 1.0], False),
        ([INF, 1.0], [1e308, 1.0], False),
    ],
)
def test_nan_and_infinity_semantics(expected, actual, ok):
    assert within_tolerance(np.array(expected), np.array(actual), rtol=1e-3, atol=1e-5)[0] is ok


def test_fp16_answers_are_compared_in_float64_against_fp32_references():
    want = np.array([[0.1, 2.5]], np.float32)
    assert within_tolerance(want, want.astype(np.float16), rtol=1e-3, atol=1e-4)[0]


def test_strings_compare_exactly_and_shapes_must_match():
    assert within_tolerance(np.array(["a", "b"]), np.array(["a", "b"]), 0, 0) == (True, 0.0)
    assert not within_tolerance(np.array(["a", "b"]), np.array(["a", "c"]), 1, 1)[0]
    assert within_tolerance(np.zeros((2, 3)), np.zeros((3, 2)), 1, 1) == (False, INF)


def test_messages_name_the_output_the_reference_and_the_difference():
    want = {"scores": np.array([[1.0, 2.0]])}
    assert compare_outputs(want, {"scores": np.array([[1.0, 2.0]]), "extra": np.zeros(1)}, 1e-3, 1e-5) == []
    [problem] = compare_outputs(want, {"scores": np.array([[1.0, 2.5]])}, 1e-3, 1e-5, "the local onnx run")
    assert problem == "output 'scores' differs from the local onnx run: max abs diff 0.5 (rtol=0.001, atol=1e-05)"
    assert compare_outputs(want, {}, 1e-3, 1e-5) == ["output 'scores' is missing"]
