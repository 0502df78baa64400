"""Python-based stand-in for Triton's C++ ``onnxruntime`` backend.

Triton loads this file for every model whose config.pbtxt says ``backend: "onnxruntime"``
when the C++ backend is absent (the CPU-only ``tritonserver`` from nvidia-pytriton).
It serves the real ``model.onnx`` with an onnxruntime session and honours the same
config: tensor names from the config, batching along axis 0 when ``max_batch_size > 0``.
"""

import json
import os
import site
import sys

# The backend stub starts an isolated interpreter that ignores PYTHONPATH; the stack puts the
# virtualenv there. Add it as site dirs (honours editable-install .pth files) ahead of the
# base interpreter's site-packages, whose numpy may be one the stub cannot use.
_before = list(sys.path)
for _entry in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    site.addsitedir(_entry)
sys.path[:] = [p for p in sys.path if p not in _before] + _before

import onnxruntime

from batching import execute_batched  # copied beside this file by make_backend_dir


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.batched = config.get("max_batch_size", 0) > 0

    def execute(self, requests):
        def run(arrays):
            return self.session.run(self.output_names, dict(zip(self.input_names, arrays)))

        return execute_batched(requests, self.input_names, self.output_names, self.batched, run)
