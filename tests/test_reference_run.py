"""The verification's local reference run gives the same answers in process and in a child
(the child keeps a large model's weights out of the publishing process)."""

from __future__ import annotations

import numpy as np
import pytest
from models import Scorer, export_onnx, sample

from mlflow_triton.flavors.registry import get as get_flavor
from mlflow_triton.rollout.reference_run import ReferenceRunFailed, run_reference

ONNX = get_flavor("onnx")


def test_child_and_in_process_runs_agree(tmp_path):
    (tmp_path / "model").mkdir()
    model_file = export_onnx(Scorer(seed=4), tmp_path / "model" / "model.onnx")
    x = sample(3, seed=9)
    inside = run_reference(ONNX, model_file, [("features", x)], ["scores"])
    child = run_reference(ONNX, model_file, [("features", x)], ["scores"], in_process_max_bytes=0)
    assert inside["scores"].shape == (3, 3)
    np.testing.assert_array_equal(inside["scores"], child["scores"])


def test_a_failing_child_is_reported_as_a_runtime_failure(tmp_path):
    broken = tmp_path / "model" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(ReferenceRunFailed):
        run_reference(ONNX, broken, [("features", sample(1))], ["scores"], in_process_max_bytes=0)
