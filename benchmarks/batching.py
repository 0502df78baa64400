"""Dynamic batching: the generated config vs the same model with batching off, side by side.

One MLP (1024 -> 4096 -> 4096 -> 1024, float32, 96 MiB of weights) is published twice
through the plugin on one tritonserver (one CPU instance each):

* ``mlp-batched``: the generated config as is (``max_batch_size: 32``, ``dynamic_batching``
  with the default 200 us queue delay);
* ``mlp-unbatched``: the same model with ``-C dynamic_batching=false`` (same shapes, each
  request executes alone).

Batch-1 requests are sent by the async HTTP client (``tritonclient.http.aio``) from
``concurrency`` coroutines for a fixed time. At batch 1 each request reads all 96 MiB of
weights for ~25 MFLOP of work (memory-bound); a batch of 32 reads them once, which is where
batching pays. Triton's statistics give the average batch size actually executed.

Run::

    .venv/bin/python benchmarks/batching.py                 # ~1.5 minutes
    .venv/bin/python benchmarks/batching.py --seconds 3 --concurrency 1 32
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, median, parser, quiet_logs, table, write_json

IN, HIDDEN, OUT = 1024, 4096, 1024
MODELS = {"batched": {}, "unbatched": {"dynamic_batching": False}}


def mlp_model_dir(folder: Path) -> str:
    """An MLflow ONNX model of the MLP, weights embedded in model.onnx."""
    import mlflow.onnx
    from mlflow.models import infer_signature
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes = [(IN, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, OUT)]
    nodes, inits, current = [], [], "x"
    for i, (rows, cols) in enumerate(sizes):
        weight = (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(rows)).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"W{i}"), numpy_helper.from_array(np.zeros(cols, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]  # fmt: skip
        current = f"a{i}"
        if i < len(sizes) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, OUT])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.zeros((1, IN), np.float32)
    signature = infer_signature({"x": x}, {"y": np.zeros((1, OUT), np.float32)})
    mlflow.onnx.save_model(
        model, str(folder), signature=signature, save_as_external_data=False, pip_requirements=["onnx"]
    )
    return str(folder)


async def drive(url: str, model: str, concurrency: int, seconds: float, warmup: float) -> dict[str, Any]:
    """Closed-loop load: ``concurrency`` coroutines each send batch-1 requests back to back."""
    import tritonclient.http.aio as aioclient

    # Two spare connections: the statistics calls must not queue behind the workers.
    client = aioclient.InferenceServerClient(url.removeprefix("http://"), conn_limit=concurrency + 2)
    x = np.random.default_rng(1).standard_normal((1, IN), dtype=np.float32)
    before = await client.get_inference_statistics(model)
    start = time.perf_counter()
    measure_from, measure_to = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    counted = 0

    async def worker() -> None:
        nonlocal counted
        request = aioclient.InferInput("x", [1, IN], "FP32")
        request.set_data_from_numpy(x)
        wanted = [aioclient.InferRequestedOutput("y")]
        while (now := time.perf_counter()) < measure_to:
            result = await client.infer(model, [request], outputs=wanted)
            done = time.perf_counter()
            assert result.as_numpy("y").shape == (1, OUT)
            if measure_from <= now and done <= measure_to:
                counted += 1
                latencies.append(done - now)

    stats_at_start = None

    async def snapshot_at_start() -> None:
        nonlocal stats_at_start
        await asyncio.sleep(warmup)
        stats_at_start = await client.get_inference_statistics(model)

    await asyncio.gather(snapshot_at_start(), *(worker() for _ in range(concurrency)))
    after = await client.get_inference_statistics(model)
    await client.close()

    def counts(stats) -> tuple[int, int]:
        entry = stats["model_stats"][0]
        return int(entry["inference_count"]), int(entry["execution_count"])

    inferences, executions = (a - b for a, b in zip(counts(after), counts(stats_at_start or before), strict=True))
    latencies.sort()
    return {
        "requests_per_s": counted / seconds,
        "p50_ms": 1000 * median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
        "avg_batch": inferences / executions if executions else 0.0,
        "requests": counted,
    }


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    arguments.add_argument("--seconds", type=float, default=6.0, help="measured seconds per point")
    arguments.add_argument("--warmup", type=float, default=1.5)
    args = arguments.parse_args()
    quiet_logs()
    machine = machine_info()
    from mlflow.deployments import get_deploy_client

    from mlflow_triton.local.stack import LocalStack
    from mlflow_triton.repository.stores import open_store
    from mlflow_triton.triton_config.model_config import parse_pbtxt

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-batching-"))
    stack = LocalStack(workdir / "stack", replicas=1, with_mlflow=False).start()
    points: list[dict[str, Any]] = []
    try:
        with stack.exported_env():
            model_dir = mlp_model_dir(workdir / "mlp")
            url = stack.triton_urls[0]
            client = get_deploy_client(f"triton:/{url}")
            configs = {}
            for kind, overrides in MODELS.items():
                client.create_deployment(f"mlp-{kind}", model_dir, config={"instance_kind": "cpu", **overrides})
                config = parse_pbtxt(open_store(stack.model_repository).read_bytes(f"mlp-{kind}/config.pbtxt"))
                configs[kind] = {
                    "max_batch_size": config.max_batch_size,
                    "dynamic_batching": config.HasField("dynamic_batching"),
                    "max_queue_delay_microseconds": config.dynamic_batching.max_queue_delay_microseconds,
                    "instance_group": f"{config.instance_group[0].count} x KIND_CPU",
                }
            for concurrency in args.concurrency:
                for kind in MODELS:
                    figures = asyncio.run(drive(url, f"mlp-{kind}", concurrency, args.seconds, args.warmup))
                    points.append({"model": kind, "concurrency": concurrency, **figures})
                    print(f"  {kind:9} concurrency {concurrency:2}: {figures['requests_per_s']:7.1f} req/s, "
                          f"p50 {figures['p50_ms']:.1f} ms, avg batch {figures['avg_batch']:.1f}", flush=True)  # fmt: skip
    finally:
        stack.stop()

    rows, ratios = [], {}
    for concurrency in args.concurrency:
        on = next(p for p in points if p["model"] == "batched" and p["concurrency"] == concurrency)
        off = next(p for p in points if p["model"] == "unbatched" and p["concurrency"] == concurrency)
        ratios[concurrency] = on["requests_per_s"] / off["requests_per_s"]
        rows.append([concurrency, f"{off['requests_per_s']:.1f}", f"{off['p50_ms']:.1f}",
                     f"{on['requests_per_s']:.1f}", f"{on['p50_ms']:.1f}", f"{on['avg_batch']:.1f}",
                     f"{ratios[concurrency]:.2f}"])  # fmt: skip
    print(f"\nDynamic batching, MLP {IN}-{HIDDEN}-{HIDDEN}-{OUT} fp32 (96 MiB), batch-1 HTTP requests, "
          f"1 tritonserver, 1 CPU instance per model, {args.seconds:.0f} s per point "
          f"(machine: {machine['nproc']} x {machine['cpu']})")  # fmt: skip
    print(table(rows, ["concurrency", "batching off req/s", "off p50 ms", "generated config req/s",
                       "on p50 ms", "avg batch executed", "ratio (target >= 3 at 32)"]))  # fmt: skip
    print(f"configs: {configs}")
    write_json(args.json, {"benchmark": "batching", "machine": machine, "configs": configs,
                           "points": points, "ratios": ratios, "seconds": args.seconds})  # fmt: skip


if __name__ == "__main__":
    main()
