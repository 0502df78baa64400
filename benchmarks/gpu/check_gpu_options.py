"""GPU checks of the generated GPU options, against a real GPU Triton (nothing depends on them).

Needs a tritonserver with the C++ onnxruntime backend built with TensorRT (the NGC image
``nvcr.io/nvidia/tritonserver:<yy.mm>-py3``), in explicit model-control mode on a repository
the plugin can write, and an NVIDIA GPU. The CPU stack of the test suite cannot run these
(its onnxruntime stand-in has no GPU execution providers). For each check, the plugin publishes
one ONNX MLP and the script verifies what Triton reports and answers::

    tritonserver --model-repository=s3://models/triton --model-control-mode=explicit \\
        --cache-config=local,size=67108864
    TRITON_URL=http://gpu-host:8000 TRITON_MODEL_REPO=s3://models/triton \\
        python benchmarks/gpu/check_gpu_options.py [--gpus 0,1]

Checks (each prints PASS/FAIL with figures; exit code 1 if any fails):

1. ``accelerator=tensorrt precision=fp16 gpus=<ids> response_cache=true`` loads READY (warmup
   on by default for GPU instances), the served config carries the TensorRT accelerator,
   ``gpus`` and the cache, and answers match onnxruntime on CPU within FP16 tolerance.
2. The TensorRT engine cache is reused: a reload of the same version is faster than the first
   load (the engine is built once, in ``trt_engine_cache_path``).
3. Warmup: first-request latency after a reload with ``warmup=true`` vs ``warmup=false``.
4. ``accelerator=cuda`` loads and answers within FP32 tolerance.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from warmup import BATCH, WIDTH, model_dirs  # noqa: E402  (the same MLP as benchmarks/warmup.py)

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str) -> None:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def first_request_ms(client, name: str, x: np.ndarray) -> float:
    import tritonclient.http as httpclient

    client.unload_model(name)
    while client.is_model_ready(name):
        time.sleep(0.05)
    client.load_model(name)
    request = httpclient.InferInput("features", list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    started = time.perf_counter()
    client.infer(name, [request])
    return 1000 * (time.perf_counter() - started)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--gpus", default="0", help="GPU indices for -C gpus")
    arguments.add_argument("--rounds", type=int, default=3)
    args = arguments.parse_args()
    import onnxruntime
    import tritonclient.http as httpclient
    from mlflow.deployments import get_deploy_client

    from mlflow_triton.settings.target import parse_target_uri

    url = parse_target_uri("triton")[0]
    deployer = get_deploy_client("triton")
    client = httpclient.InferenceServerClient(url.split("://", 1)[1])
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    onnx_dir = model_dirs(folder)["onnx"]
    session = onnxruntime.InferenceSession(str(Path(onnx_dir) / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((BATCH, WIDTH), dtype=np.float32)
    [expected] = session.run(["scores"], {"features": x})
    gpu = {"instance_kind": "gpu", "gpus": args.gpus}
    deployments = {
        "gpu-check-trt": {**gpu, "accelerator": "tensorrt", "precision": "fp16", "response_cache": "true"},
        "gpu-check-trt-cold": {**gpu, "accelerator": "tensorrt", "precision": "fp16", "warmup": "false"},
        "gpu-check-cuda": {**gpu, "accelerator": "cuda"},
    }
    try:
        for name, config in deployments.items():
            started = time.perf_counter()
            deployer.create_deployment(name, onnx_dir, config=config)
            check(f"{name} publishes", True, f"{time.perf_counter() - started:.1f} s (staged load + serving load)")
        served = client.get_model_config("gpu-check-trt")
        accelerators = served.get("optimization", {}).get("execution_accelerators", {}).get("gpu_execution_accelerator", [])
        check("TensorRT accelerator served", [a["name"] for a in accelerators] == ["tensorrt"], str(accelerators))
        groups = served.get("instance_group", [])
        wanted = [int(g) for g in args.gpus.split(",")]
        check("instance_group.gpus served", all(g.get("gpus") == wanted for g in groups), str(groups))
        check("response cache served", served.get("response_cache", {}).get("enable") is True, str(served.get("response_cache")))
        for name, tolerance in (("gpu-check-trt", 5e-2), ("gpu-check-cuda", 1e-4)):
            got = deployer.predict(name, {"features": x})["predictions"]["scores"]
            error = float(np.max(np.abs(np.asarray(got) - expected)))
            check(f"{name} answers", error <= tolerance, f"max abs error {error:.2e} (tolerance {tolerance})")

        loads = []
        for _ in range(2):
            client.unload_model("gpu-check-trt")
            while client.is_model_ready("gpu-check-trt"):
                time.sleep(0.05)
            started = time.perf_counter()
            client.load_model("gpu-check-trt")
            loads.append(time.perf_counter() - started)
        check("engine cache reused", loads[1] <= loads[0] * 1.1, f"reloads {loads[0]:.2f} s, {loads[1]:.2f} s")

        warm = [first_request_ms(client, "gpu-check-trt", x) for _ in range(args.rounds)]
        cold = [first_request_ms(client, "gpu-check-trt-cold", x) for _ in range(args.rounds)]
        check("warmup helps the first request", min(warm) < min(cold),
              f"first request after reload: warmup {np.median(warm):.1f} ms vs none {np.median(cold):.1f} ms")  # fmt: skip
    finally:
        for name in deployments:
            deployer.delete_deployment(name)
    failed = [name for name, ok, _ in RESULTS if not ok]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
