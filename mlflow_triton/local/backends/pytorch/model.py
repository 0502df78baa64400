"""Python-based stand-in for Triton's C++ ``pytorch`` (libtorch) backend.

Triton loads this file for every model whose config.pbtxt says ``backend: "pytorch"``
when the C++ backend is absent. It serves the real TorchScript ``model.pt`` with
``torch.jit.load`` and follows libtorch's naming rule: inputs ``INPUT__<i>`` are passed
positionally in index order, outputs ``OUTPUT__<j>`` are the ``j``-th returned tensor.
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

import torch

from batching import execute_batched  # copied beside this file by make_backend_dir


def _index(name: str) -> int:
    prefix, sep, index = name.rpartition("__")
    if not sep or not index.isdigit():
        raise ValueError(
            f"tensor name {name!r} does not follow libtorch's '<name>__<index>' convention"
        )
    return int(index)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        filename = config.get("default_model_filename") or "model.pt"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        torch.set_num_threads(1)
        self.module = torch.jit.load(path, map_location="cpu").eval()
        self.input_names = sorted((t["name"] for t in config["input"]), key=_index)
        self.output_names = [t["name"] for t in config["output"]]
        self.output_indices = [_index(name) for name in self.output_names]
        self.batched = config.get("max_batch_size", 0) > 0

    def execute(self, requests):
        def run(arrays):
            with torch.inference_mode():
                result = self.module(*(torch.from_numpy(array) for array in arrays))
            result = (result,) if isinstance(result, torch.Tensor) else tuple(result)
            return [result[i].numpy() for i in self.output_indices]

        return execute_batched(requests, self.input_names, self.output_names, self.batched, run)
