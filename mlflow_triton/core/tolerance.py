"""One comparison of answers with their reference, used by every check that compares numbers.

The export callback compares its exports with the eager model, golden outputs are checked
against what Triton answers, and the smoke test compares Triton with the model run locally:
all three call :func:`compare_outputs`, so a model passes or fails the same way everywhere.

An element passes when ``|actual - expected| <= atol + rtol * |expected|``, computed in float64
(an fp16 answer is checked against fp32 values). NaN semantics, the same for every caller:

- NaN where the reference has NaN passes (a model that returns NaN for padding keeps doing so);
- NaN against a number, or a number against NaN, fails (difference +inf);
- an infinity passes only against the same infinity.

Arrays that are not numbers (strings, bytes) must be equal element-wise. Shapes must match.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["compare_outputs", "element_differences", "within_tolerance"]


def element_differences(
    expected: np.ndarray, actual: np.ndarray, rtol: float, atol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise ``|actual - expected|`` (0 where they are the same value, NaN against NaN
    included; ``inf`` for NaN against a number or different infinities) and what each element
    is allowed (``atol + rtol * |expected|``), in float64. Both arrays have ``expected``'s shape,
    which ``actual`` must have; numeric arrays only."""
    want, got = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    same = (want == got) | (np.isnan(want) & np.isnan(got))  # equal infinities, NaN against NaN
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(got - want))
    diff = np.where(np.isnan(diff), np.inf, diff)
    return diff, atol + rtol * np.abs(np.where(np.isfinite(want), want, 0.0))


def within_tolerance(expected: np.ndarray, actual: np.ndarray, rtol: float, atol: float) -> tuple[bool, float]:
    """Whether ``actual`` matches ``expected`` element-wise, and the largest absolute difference
    (``inf`` for mismatched shapes, NaN against a number, or different infinities)."""
    want, got = np.asarray(expected), np.asarray(actual)
    if want.shape != got.shape:
        return False, float("inf")
    if want.size == 0:
        return True, 0.0
    if want.dtype.kind not in "biufc" or got.dtype.kind not in "biufc":
        equal = bool(np.array_equal(want, got))
        return equal, 0.0 if equal else float("inf")
    diff, allowed = element_differences(want, got, rtol, atol)
    return bool(np.all(diff <= allowed)), float(diff.max())


def compare_outputs(
    expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], rtol: float, atol: float,
    reference: str = "the reference",
) -> list[str]:  # fmt: skip
    """What is wrong with ``actual`` against ``expected``, one sentence per output (empty: it
    passes). Outputs missing from ``actual`` are named; extra outputs are ignored.

    Args:
        reference: how the messages call the expected values ("the golden output",
            "the local onnx run"...).
    """
    problems = []
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            problems.append(f"output {name!r} is missing")
            continue
        if np.shape(got) != np.shape(want):
            problems.append(f"output {name!r} has shape {np.shape(got)}, {reference} {np.shape(want)}")
            continue
        ok, diff = within_tolerance(want, got, rtol, atol)
        if not ok:
            problems.append(
                f"output {name!r} differs from {reference}: max abs diff {diff:.3g} "
                f"(rtol={rtol:g}, atol={atol:g})"
            )
    return problems
