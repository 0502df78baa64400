"""Predict throughput: the plugin's predict vs a hand-written asyncio client vs one request at a time.

Setup (not timed): moto S3 and two CPU tritonservers; an ONNX MLP (32 -> 256 -> 256 -> 8,
float32) published through the plugin with ``max_batch_size: 16`` and one CPU instance
(dynamic batching on, the generated config). ``--rows`` rows of random input.

Measured, in rows/s, over HTTP and gRPC, each method ``--repeats`` times in turn (the
medians are reported; the order rotates every round, so that load drifting on the machine
hits all alike), with the client's CPU seconds (this process, all threads):

* **plugin**: ``get_deploy_client(target).predict(name, {"x": x})`` on a client that already
  predicted once (its connections are open), the MLflow-shaped answer included (lists).
* **asyncio predictor**: ``await AsyncTritonPredictor(urls).predict(name, {"x": x})`` on the
  hand-written client's event loop (numpy answers: the library without MLflow's lists).
* **hand-written**: what an application would write with tritonclient's asyncio client:
  16-row slices, ``2 x max_batch_size x instances`` = 32 requests in flight per replica
  (Triton's optimization guide) over both replicas, answers concatenated in order
  (numpy; clients opened before timing).
* **one at a time**: tritonclient's synchronous client, one 16-row request after the other,
  to one replica (what predict did before it split and overlapped).

Target: plugin >= 0.9 x hand-written.

Run::

    .venv/bin/python benchmarks/predict.py                 # ~2 minutes
    .venv/bin/python benchmarks/predict.py --rows 50000 --repeats 5 --json predict.json
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import numpy as np
from _common import machine_info, median, parser, quiet_logs, table, write_json

IN, HIDDEN, OUT = 32, 256, 8
MAX_BATCH_SIZE = 16
#: Triton's optimization guide: 2 x max_batch_size x instance count (one CPU instance).
CONCURRENCY = 2 * MAX_BATCH_SIZE * 1
NAME = "bench-predict"


def mlp_model_dir(folder: Path) -> str:
    """An MLflow ONNX model of the MLP (input ``x``, output ``y``)."""
    import mlflow.onnx
    from mlflow.models import infer_signature
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes = [(IN, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, OUT)]
    nodes, inits, current = [], [], "x"
    for i, (rows, cols) in enumerate(sizes):
        weight = (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(rows)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"]))
        current = f"m{i}"
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
    mlflow.onnx.save_model(model, str(folder), signature=signature, pip_requirements=["onnx"])
    return str(folder)


class HandWritten:
    """A tritonclient asyncio client as an application would write it, connections kept."""

    def __init__(self, urls: list[str], concurrency: int) -> None:
        self.urls, self.concurrency = urls, concurrency
        self.grpc = urlparse(urls[0]).scheme == "grpc"
        self.loop = asyncio.new_event_loop()
        self.clients = self.loop.run_until_complete(self._open())

    async def _open(self) -> list[Any]:
        if self.grpc:
            import tritonclient.grpc.aio as aio

            return [aio.InferenceServerClient(urlparse(u).netloc) for u in self.urls]
        import tritonclient.http.aio as aio

        return [aio.InferenceServerClient(urlparse(u).netloc, conn_limit=self.concurrency) for u in self.urls]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.loop.run_until_complete(self._predict(x))

    async def _predict(self, x: np.ndarray) -> np.ndarray:
        if self.grpc:
            import tritonclient.grpc.aio as aio
        else:
            import tritonclient.http.aio as aio
        slices = [slice(i, i + MAX_BATCH_SIZE) for i in range(0, len(x), MAX_BATCH_SIZE)]
        results: list[np.ndarray | None] = [None] * len(slices)
        pending = iter(range(len(slices)))

        async def worker(client: Any) -> None:
            for index in pending:
                part = x[slices[index]]
                request = aio.InferInput("x", list(part.shape), "FP32")
                request.set_data_from_numpy(part)
                answer = await client.infer(NAME, [request], outputs=[aio.InferRequestedOutput("y")])
                results[index] = answer.as_numpy("y")

        await asyncio.gather(*(worker(c) for _ in range(self.concurrency) for c in self.clients))
        return np.concatenate(results)  # type: ignore[arg-type]

    def close(self) -> None:
        async def close_all() -> None:
            await asyncio.gather(*(c.close() for c in self.clients))

        self.loop.run_until_complete(close_all())
        self.loop.close()


def one_at_a_time(url: str, x: np.ndarray) -> np.ndarray:
    from mlflow_triton.fleet.server import TritonServer

    with TritonServer(url) as server:
        parts = [
            server.infer(NAME, {"x": x[i : i + MAX_BATCH_SIZE]}, {"x": "FP32"}, ["y"])["y"]
            for i in range(0, len(x), MAX_BATCH_SIZE)
        ]
    return np.concatenate(parts)


def requests_per_replica(urls: list[str]) -> list[int]:
    import requests

    return [
        int(requests.get(f"{u}/v2/models/{NAME}/stats", timeout=10).json()["model_stats"][0]["inference_stats"]["success"]["count"])
        for u in urls
    ]


def measure(methods: dict[str, Callable[[], Any]], repeats: int, rows: int, want: np.ndarray) -> dict[str, Any]:
    """Each method once (warm-up, answers checked), then ``repeats`` rounds in turn: wall
    seconds and this process's CPU seconds (all its threads) per run."""
    for label, method in methods.items():
        got = np.asarray(method(), dtype=np.float32)
        assert np.allclose(got, want, rtol=1e-4, atol=1e-5), f"{label} answered wrong"
    seconds: dict[str, list[float]] = {label: [] for label in methods}
    cpu: dict[str, list[float]] = {label: [] for label in methods}
    labels = list(methods)
    for round_ in range(repeats):
        for label in labels[round_ % len(labels):] + labels[: round_ % len(labels)]:  # rotated
            method = methods[label]
            started, cpu_started = time.perf_counter(), time.process_time()
            method()
            seconds[label].append(time.perf_counter() - started)
            cpu[label].append(time.process_time() - cpu_started)
    return {
        label: {"rows_per_s": rows / median(s), "seconds": s, "client_cpu_s": median(cpu[label])}
        for label, s in seconds.items()
    }


def compare(urls: list[str], http_urls: list[str], x: np.ndarray, want: np.ndarray, repeats: int) -> dict[str, Any]:
    """The three methods over ``urls`` (one protocol), and how the plugin spread its requests."""
    from mlflow.deployments import get_deploy_client

    from mlflow_triton.inference import AsyncTritonPredictor

    client = get_deploy_client("triton:/" + ",".join(urls))
    hand = HandWritten(urls, CONCURRENCY)
    predictor = AsyncTritonPredictor(urls)
    before = requests_per_replica(http_urls)
    client.predict(NAME, {"x": x})
    spread = [a - b for a, b in zip(requests_per_replica(http_urls), before, strict=True)]
    try:
        figures = measure({
            "plugin": lambda: client.predict(NAME, {"x": x})["predictions"]["y"],
            "asyncio predictor": lambda: hand.loop.run_until_complete(predictor.predict(NAME, {"x": x}))["y"],
            "hand-written": lambda: hand.predict(x),
            "one at a time": lambda: one_at_a_time(urls[0], x),
        }, repeats, len(x), want)  # fmt: skip
    finally:
        hand.loop.run_until_complete(predictor.close())
        hand.close()
    figures["ratio"] = figures["plugin"]["rows_per_s"] / figures["hand-written"]["rows_per_s"]
    figures["asyncio_ratio"] = figures["asyncio predictor"]["rows_per_s"] / figures["hand-written"]["rows_per_s"]
    figures["speedup_vs_one_at_a_time"] = figures["plugin"]["rows_per_s"] / figures["one at a time"]["rows_per_s"]
    figures["plugin_requests_per_replica"] = spread
    return figures


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--rows", type=int, default=20_000)
    arguments.add_argument("--repeats", type=int, default=7)
    args = arguments.parse_args()
    quiet_logs()

    import onnxruntime
    from mlflow.deployments import get_deploy_client

    from mlflow_triton.local.stack import LocalStack

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-predict-"))
    info = machine_info()
    stack = LocalStack(workdir / "stack", replicas=2, with_mlflow=False).start()
    results: dict[str, Any] = {}
    try:
        with stack.exported_env():
            model_dir = mlp_model_dir(workdir / "model")
            config = {"instance_kind": "cpu", "max_batch_size": MAX_BATCH_SIZE, "verify": False}
            get_deploy_client("triton").create_deployment(NAME, model_dir, config=config)
            x = np.random.default_rng(1).standard_normal((args.rows, IN), dtype=np.float32)
            session = onnxruntime.InferenceSession(str(Path(model_dir) / "model.onnx"))
            want = session.run(None, {"x": x})[0]
            for protocol, urls in (("http", stack.triton_urls), ("grpc", [f"grpc://{p.grpc_url}" for p in stack.tritons])):
                results[protocol] = compare(urls, stack.triton_urls, x, want, args.repeats)
    finally:
        stack.stop()

    rows = []
    for protocol, figures in results.items():
        for label in ("plugin", "asyncio predictor", "hand-written", "one at a time"):
            rows.append([protocol, label, f"{figures[label]['rows_per_s']:,.0f}",
                         f"{figures[label]['client_cpu_s']:.2f}",
                         " ".join(f"{s:.2f}" for s in figures[label]["seconds"])])  # fmt: skip
        rows.append([protocol, "plugin / hand-written", f"{figures['ratio']:.2f}", "", "target >= 0.9"])
        rows.append([protocol, "asyncio predictor / hand-written", f"{figures['asyncio_ratio']:.2f}", "", ""])
        rows.append([protocol, "plugin requests per replica", str(figures["plugin_requests_per_replica"]), "", ""])
    print(f"\n{args.rows} rows, {MAX_BATCH_SIZE} per request, {CONCURRENCY} in flight per replica, "
          f"2 replicas; {info['nproc']} CPUs, load average at start {info['load_average']}")  # fmt: skip
    print(table(rows, ["protocol", "method", "rows/s (median)", "client CPU s", "seconds per run"]))
    write_json(args.json, {
        "rows": args.rows, "max_batch_size": MAX_BATCH_SIZE, "concurrency_per_replica": CONCURRENCY,
        "replicas": 2, "repeats": args.repeats, "model": f"MLP {IN}-{HIDDEN}-{HIDDEN}-{OUT} float32",
        "results": results, "machine": info,
    })  # fmt: skip


if __name__ == "__main__":
    main()
