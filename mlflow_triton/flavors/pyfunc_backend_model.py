"""Triton Python-backend model serving an MLflow ``python_function`` model.

Shipped by mlflow-triton into each published version folder next to ``mlflow_model/`` (the
whole MLflow model). Triton runs it in the server's Python environment, or in the packed one
that ``EXECUTION_ENV_PATH`` names (``-C python_env=...``).

The tensor mapping comes from the config the plugin generated: parameter
``mlflow_triton.tensor_names`` (Triton name -> MLflow name) and ``mlflow_triton.pyfunc_io``
(how the pyfunc takes its input: ``columns`` -> a DataFrame, one [batch, 1] tensor per
column; ``tensors`` -> a dict of arrays; ``array`` -> the single array). Strings travel as
Triton BYTES (``TYPE_STRING``) and are decoded to ``str`` for string columns/tensors.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def _parameter(config, key):
    return json.loads(config.get("parameters", {}).get(key, {}).get("string_value") or "{}")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"], "mlflow_model")
        try:
            import mlflow.pyfunc

            self.model = mlflow.pyfunc.load_model(folder)
        except ModuleNotFoundError as err:  # by type: the model's requirements are not installed
            raise RuntimeError(
                f"mlflow-triton: the pyfunc model needs Python package {err.name!r}, which is not "
                "importable in Triton's Python environment. Install it in the server's environment "
                "or deploy with -C python_env=<packed env .tar.gz> (see the model's "
                "requirements.txt)."
            ) from err
        names = _parameter(config, "mlflow_triton.tensor_names")
        io = _parameter(config, "mlflow_triton.pyfunc_io")
        self.input_mode = io.get("input_mode", "tensors")
        self.decode = set(io.get("decode", []))
        self.inputs = [(t["name"], names.get("inputs", {}).get(t["name"], t["name"])) for t in config["input"]]
        batched = int(config.get("max_batch_size", 0)) > 0
        self.outputs = []
        for tensor in config["output"]:
            shape = [int(d) for d in (tensor.get("reshape", {}).get("shape") if "reshape" in tensor else tensor["dims"])]
            self.outputs.append((
                tensor["name"], names.get("outputs", {}).get(tensor["name"], tensor["name"]),
                pb_utils.triton_string_to_numpy(tensor["data_type"]), [-1] + shape if batched else shape,
            ))

    def _model_input(self, request):
        arrays = {}
        for triton_name, mlflow_name in self.inputs:
            array = pb_utils.get_input_tensor_by_name(request, triton_name).as_numpy()
            if triton_name in self.decode:
                array = np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v, otypes=[object])(array)
            arrays[mlflow_name] = array
        if self.input_mode == "columns":
            import pandas as pd

            return pd.DataFrame({name: array.reshape(-1) for name, array in arrays.items()})
        if self.input_mode == "array":
            return next(iter(arrays.values()))
        return arrays

    def _output_values(self, prediction):
        import pandas as pd

        names = [mlflow_name for _, mlflow_name, _, _ in self.outputs]
        if isinstance(prediction, pd.DataFrame):
            if set(names) <= set(prediction.columns):
                return [prediction[name].to_numpy() for name in names]
            if len(names) == 1 and prediction.shape[1] > 1:
                return [prediction.to_numpy()]
            return [prediction.iloc[:, index].to_numpy() for index in range(len(names))]
        if isinstance(prediction, dict):
            return [np.asarray(prediction[name]) for name in names]
        return [np.asarray(prediction)]

    def _tensor(self, name, value, dtype, shape):
        value = np.asarray(value)
        if dtype == np.object_:
            flat = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value.reshape(-1)]
            value = np.array(flat, dtype=np.object_).reshape(value.shape)
        else:
            value = value.astype(dtype)
        return pb_utils.Tensor(name, value.reshape(shape))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                values = self._output_values(self.model.predict(self._model_input(request)))
                tensors = [
                    self._tensor(name, value, dtype, shape)
                    for (name, _, dtype, shape), value in zip(self.outputs, values, strict=True)
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as err:  # one bad request must not fail the others in its batch
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{type(err).__name__}: {err}")
                ))
        return responses
