"""Warmup: first-request latency after a reload, with and without ``model_warmup``, side by side.

One MLP (512 -> 8 x [512, GELU] -> 10, float32) is logged as TorchScript and as ONNX and each
is published twice through the plugin on one real tritonserver (one CPU instance each):
``-C warmup=false`` and ``-C warmup=true`` (the MLflow input example, batch 8, stored in
``NAME/warmup/<version>/``). Then, round after round, every model is unloaded and loaded
again (explicit model control; ``load`` returns when Triton reports it READY, i.e. after the
warmup requests ran), and one batch-8 request is timed: the first after the reload, then the
median of the next ``--steady`` ones.

Where the first request is slow here:

* **TorchScript** (the pytorch stand-in runs the real ``torch.jit`` module, as libtorch does):
  the profiling executor profiles the first call and optimizes the graph on the next, so the
  first requests after a load pay for that. Warmup runs them inside the load instead.
* **ONNX** (the onnxruntime stand-in): the ``InferenceSession`` is created eagerly at load;
  its first ``run`` only allocates its memory arena, so the effect is small. On a GPU Triton
  the first request also pays for CUDA/cuDNN/TensorRT initialisation (see ``benchmarks/gpu/``).

Run::

    .venv/bin/python benchmarks/warmup.py               # ~2 minutes on 2 cores
    .venv/bin/python benchmarks/warmup.py --rounds 3 --steady 5
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, median, parser, quiet_logs, table, write_json

WIDTH, LAYERS, CLASSES, BATCH = 512, 8, 10, 8


def model_dirs(folder: Path) -> dict[str, str]:
    """The MLP as an MLflow TorchScript model and an MLflow ONNX model, with an input example."""
    import mlflow.onnx
    import mlflow.pytorch
    import onnx
    import torch
    from mlflow.models import infer_signature

    torch.manual_seed(0)
    blocks = [torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.GELU()) for _ in range(LAYERS)]
    model = torch.nn.Sequential(*blocks, torch.nn.Linear(WIDTH, CLASSES)).eval()
    x = np.random.default_rng(0).standard_normal((BATCH, WIDTH), dtype=np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    signature = infer_signature({"features": x}, {"scores": y})
    onnx_path = folder / "mlp.onnx"
    torch.onnx.export(
        model, (torch.from_numpy(x),), str(onnx_path), input_names=["features"], output_names=["scores"],
        dynamic_axes={"features": {0: "batch"}, "scores": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    dirs = {"onnx": str(folder / "onnx"), "torchscript": str(folder / "torchscript")}
    mlflow.onnx.save_model(
        onnx.load(str(onnx_path)), dirs["onnx"], signature=signature, input_example={"features": x},
        save_as_external_data=False, pip_requirements=["onnx"],
    )  # fmt: skip
    mlflow.pytorch.save_model(
        torch.jit.trace(model, (torch.from_numpy(x),)), dirs["torchscript"], signature=signature,
        input_example={"features": x}, serialization_format="pickle", pip_requirements=["torch"],
    )  # fmt: skip
    return dirs


def time_request(client: Any, name: str, input_name: str, x: np.ndarray) -> float:
    import tritonclient.http as httpclient

    request = httpclient.InferInput(input_name, list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    started = time.perf_counter()
    client.infer(name, [request])
    return time.perf_counter() - started


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--rounds", type=int, default=5, help="reloads per model")
    arguments.add_argument("--steady", type=int, default=10, help="requests after the first one")
    args = arguments.parse_args()
    quiet_logs()
    machine = machine_info()
    import tritonclient.http as httpclient
    from mlflow.deployments import get_deploy_client

    from mlflow_triton.local.stack import LocalStack

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-warmup-"))
    stack = LocalStack(workdir / "stack", replicas=1, with_mlflow=False).start()
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        with stack.exported_env():
            dirs = model_dirs(workdir)
            deployer = get_deploy_client("triton")
            models = {}
            for flavor, path in dirs.items():
                for warmup in ("false", "true"):
                    name = f"mlp-{flavor}-warmup-{warmup}"
                    deployer.create_deployment(name, path, config={"instance_kind": "cpu", "warmup": warmup, "verify": "false"})
                    models[name] = ("INPUT__0" if flavor == "torchscript" else "features", flavor, warmup)
                    samples[name] = {"load_s": [], "first_ms": [], "second_ms": [], "steady_ms": []}
            x = np.random.default_rng(1).standard_normal((BATCH, WIDTH), dtype=np.float32)
            client = httpclient.InferenceServerClient(stack.triton_urls[0].removeprefix("http://"))
            for _ in range(args.rounds):
                for name, (input_name, _, _) in models.items():  # side by side, interleaved
                    client.unload_model(name)
                    while client.is_model_ready(name):
                        time.sleep(0.05)
                    started = time.perf_counter()
                    client.load_model(name)
                    samples[name]["load_s"].append(time.perf_counter() - started)
                    samples[name]["first_ms"].append(1000 * time_request(client, name, input_name, x))
                    samples[name]["second_ms"].append(1000 * time_request(client, name, input_name, x))
                    steady = [time_request(client, name, input_name, x) for _ in range(args.steady)]
                    samples[name]["steady_ms"].append(1000 * median(steady))
            client.close()
    finally:
        stack.stop()

    results = []
    for name, (_, flavor, warmup) in models.items():
        values = {key: median(v) for key, v in samples[name].items()}
        results.append({"model": name, "flavor": flavor, "warmup": warmup, **values, "samples": samples[name]})
    ratios = {}
    for flavor in dirs:
        cold = next(r for r in results if r["flavor"] == flavor and r["warmup"] == "false")
        warm = next(r for r in results if r["flavor"] == flavor and r["warmup"] == "true")
        ratios[flavor] = cold["first_ms"] / warm["first_ms"]
    rows = [
        [r["flavor"], r["warmup"], f"{r['load_s']:.2f}", f"{r['first_ms']:.1f}", f"{r['second_ms']:.1f}", f"{r['steady_ms']:.1f}"]
        for r in results
    ]  # fmt: skip
    print(f"Machine: {machine['nproc']} x {machine['cpu']}, load average {machine['load_average']}")
    print(f"Medians over {args.rounds} reloads, batch {BATCH}, one CPU instance:")
    print(table(rows, ["flavor", "warmup", "load s", "1st request ms", "2nd ms", f"steady ms (median of {args.steady})"]))
    print("first request without / with warmup: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    write_json(args.json, {"machine": machine, "rounds": args.rounds, "batch": BATCH, "results": results, "ratios": ratios})


if __name__ == "__main__":
    main()
