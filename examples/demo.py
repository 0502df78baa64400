"""`make demo`: from a Lightning training run to a live Triton inference, with no glue code.

1. Starts the embedded stack on free loopback ports: a moto S3 server (the Triton model
   repository and MLflow's artifact store), an MLflow tracking server (sqlite) and tritonserver
   in explicit model-control mode.
2. Trains a tiny Lightning regressor; ``ExportBestCheckpoint`` exports the best checkpoint to
   TorchScript and ONNX, verifies both against eager PyTorch, logs them to MLflow and registers
   the version under the alias ``production``.
3. Deploys ``models:/tiny-regressor@production`` with the ``triton`` MLflow deployment target,
   once as ONNX and once as TorchScript, and prints Triton's answers next to eager PyTorch.
4. Stops everything it started.

It prints its story, not the libraries' chatter: MLflow's progress bars and run URLs,
Lightning's banners and tips, and third-party warnings are off; ``python examples/demo.py -v``
shows them (and the INFO logs of every library).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # the demo runs offline

from tiny_model import TinyRegressor, train  # noqa: E402

from mlflow_triton.local.stack import LocalStack  # noqa: E402

MODEL = "tiny-regressor"
#: Libraries whose logs and warnings the demo leaves out unless -v.
THIRD_PARTY = ("mlflow", "pytorch_lightning", "lightning", "lightning_fabric", "torch", "onnx", "onnxscript")


def quiet_libraries() -> None:
    """Only the demo's story: this project's INFO logs, nothing but errors from the libraries."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow  # noqa: F401  (configures its own logger first, so the level below sticks)

    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.ERROR)
    pattern = "|".join(THIRD_PARTY)
    warnings.filterwarnings("ignore", module=rf"({pattern})(\.|$)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="also show the libraries' logs, bars and warnings")
    verbose = parser.parse_args().verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("mlflow_triton").setLevel(logging.INFO)
    logging.getLogger("lightning_callbacks").setLevel(logging.INFO)
    if not verbose:
        quiet_libraries()
    workdir = Path(tempfile.mkdtemp(prefix="mlflow-triton-demo-"))
    started = time.monotonic()
    print(f"[demo] starting moto S3, mlflow server and tritonserver under {workdir}")
    with LocalStack(workdir, replicas=1) as stack:
        os.environ.update(stack.env)
        print(f"[demo] MLflow {stack.tracking_uri} | Triton {stack.triton_urls[0]} | repository {stack.triton_repository}")

        print("[demo] training with ExportBestCheckpoint (TorchScript + ONNX, verified, registered)")
        export = train(tracking_uri=stack.tracking_uri, registered_model_name=MODEL, alias="production",
                       workdir=workdir / "train")  # fmt: skip
        version = export.registered_version.version
        print(f"[demo] registered models:/{MODEL}/{version} (alias @production)")

        from mlflow.deployments import get_deploy_client

        client = get_deploy_client("triton")
        deployments = {  # instance_kind=auto (the default): the CPU here, the GPUs of a GPU server
            MODEL: {},
            f"{MODEL}-torchscript": {"flavor": "torchscript"},
        }
        for name, config in deployments.items():
            result = client.create_deployment(name, f"models:/{MODEL}@production", config=config)
            print(f"[demo] deployed {name}: {result['flavor']} version {result['version']} READY "
                  f"in {result['seconds']}s ({result['repository']})")  # fmt: skip

        eager = TinyRegressor()
        best = torch.load(export.last_exported_checkpoint, map_location="cpu", weights_only=False)
        eager.load_state_dict(best["state_dict"])
        eager.eval()
        x = np.random.default_rng(0).normal(size=(4, eager.example_input_array.shape[1])).astype(np.float32)
        expected = eager(torch.from_numpy(x)).detach().numpy()
        for name in deployments:
            predictions = client.predict(name, x)["predictions"]
            output_name, values = next(iter(predictions.items()))
            got = np.asarray(values, dtype=np.float32)
            print(f"\n[demo] Triton inference from {name!r} (output {output_name!r}, batch of {len(x)}):")
            for row_in, row_out, row_ref in zip(x, got, expected, strict=True):
                print(f"  x={np.array2string(row_in[:3], precision=2)}... -> triton={np.array2string(row_out, precision=4)}"
                      f"  eager={np.array2string(row_ref, precision=4)}")  # fmt: skip
            diff = float(np.max(np.abs(got - expected)))
            print(f"  max |triton - eager| = {diff:.2e}")
            if not np.allclose(got, expected, rtol=1e-3, atol=1e-5):
                raise SystemExit(f"[demo] {name}: Triton's output differs from eager PyTorch")
        print(f"\n[demo] done in {time.monotonic() - started:.0f}s; stopping the servers it started")
    shutil.rmtree(workdir, ignore_errors=True)  # after a success; a failure leaves its logs there


if __name__ == "__main__":
    main()
