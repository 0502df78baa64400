"""Sync at scale: ``mlflow_triton.promotion.sync`` over 200 registered models with nothing to do.

Setup (not timed): a real MLflow server and moto S3 from the embedded stack; one ONNX model
logged once and registered as 200 models, each with alias ``production`` -> version 1; all
200 published into the repository by a first sync (smoke test off).

Triton: the no-op sync asks every replica ``is_model_ready`` for every model. Loading 200
models on the CPU tritonserver would start 200 Python-backend stub processes (~15 GB and
minutes on a 2-core machine), so the two replicas here are a stub HTTP server answering
Triton's v2 endpoints (live, ready, load, unload, index). The benchmark also times the
ready check against a real tritonserver vs the stub, so the substitution can be judged.

Measured: wall time of ``sync(spec)`` (median of ``--repeats``), all models ``unchanged``,
0 bytes moved, the same sync with one worker, and where one run spends its time. Target: <= 5 s.

Run::

    .venv/bin/python benchmarks/sync.py                 # ~2 minutes
    .venv/bin/python benchmarks/sync.py --models 50
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _common import S3Traffic, machine_info, median, parser, quiet_logs, table, write_json

ALIAS = "production"
_READY = re.compile(r"^/v2/models/(?P<name>[^/]+)(/versions/(?P<version>[^/]+))?/ready$")
_CONTROL = re.compile(r"^/v2/repository/models/(?P<name>[^/]+)/(?P<action>load|unload)$")


class StubTriton:
    """A loopback HTTP server that answers the Triton v2 calls the publisher and sync make."""

    def __init__(self) -> None:
        loaded: set[str] = set()
        self.loaded = loaded

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                path = self.path.split("?")[0]
                if path in ("/v2/health/live", "/v2/health/ready"):
                    return self._reply(200)
                match = _READY.match(path)
                if match:
                    return self._reply(200 if match["name"] in loaded else 400)
                return self._reply(404, b'{"error": "not found"}')

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0) or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?")[0]
                match = _CONTROL.match(path)
                if match:
                    (loaded.add if match["action"] == "load" else loaded.discard)(match["name"])
                    return self._reply(200)
                if path == "/v2/repository/index":
                    index = [{"name": n, "version": "1", "state": "READY"} for n in sorted(loaded)]
                    return self._reply(200, json.dumps(index).encode())
                return self._reply(404, b'{"error": "not found"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def register_models(count: int, workdir: Path) -> list[str]:
    """One logged ONNX model, registered ``count`` times with alias ``production`` -> 1."""
    import mlflow
    import mlflow.onnx
    import onnx
    import torch
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from models import Scorer, export_onnx, sample

    model = Scorer(seed=5)
    x = sample()
    signature = infer_signature({"features": x}, {"scores": model(torch.from_numpy(x)).detach().numpy()})
    with mlflow.start_run() as run:
        info = mlflow.onnx.log_model(
            onnx.load(str(export_onnx(model, workdir / "scorer.onnx"))), name="model",
            signature=signature, pip_requirements=["onnx"],
        )  # fmt: skip
    source = mlflow.get_logged_model(info.model_id).artifact_location
    client = MlflowClient()
    names = [f"sync-bench-{i:03d}" for i in range(count)]

    def register(name: str) -> None:
        client.create_registered_model(name)
        version = client.create_model_version(name, source, run_id=run.info.run_id, model_id=info.model_id)
        client.set_registered_model_alias(name, ALIAS, version.version)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(register, names))
    return names


def ready_check_latency(url: str, name: str, calls: int = 200) -> float:
    """Median seconds of one ``is_model_ready`` as the sync makes it (new client per server)."""
    from mlflow_triton.server import TritonServer

    times = []
    for _ in range(calls):
        started = time.perf_counter()
        with TritonServer(url) as server:
            assert server.is_model_ready(name, 1)
        times.append(time.perf_counter() - started)
    return median(times)


PHASES = {  # label: (object, attribute) wrapped with a timer; missing ones are skipped
    "registry: aliases of all models (one search)": ("promotion", "_all_aliases"),
    "registry: alias lookups (one call per model)": ("promotion", "_alias_version"),
    "publisher/store creation": ("ModelPublisher", "for_config"),
    "repository reads (S3: config, listing, provenance)": ("ModelPublisher", "read_state"),
    "Triton: repository index per replica": ("TritonCluster", "ready_models"),
    "Triton: ready checks / repairs": ("ModelPublisher", "repair"),
}


def time_phases(spec) -> tuple[dict[str, float], float]:
    """Seconds spent in each phase during one sync, summed over the worker threads."""
    from mlflow_triton.promotion import reconcile as promotion
    from mlflow_triton.publisher import ModelPublisher
    from mlflow_triton.server import TritonCluster

    owners = {"promotion": promotion, "ModelPublisher": ModelPublisher, "TritonCluster": TritonCluster}
    totals = {label: 0.0 for label in PHASES}
    lock = threading.Lock()
    originals = []
    for label, (owner, attribute) in PHASES.items():
        target = owners[owner]
        original = getattr(target, attribute, None)
        if original is None:
            totals.pop(label)
            continue

        def timed(*args, __original=original, __label=label, **kwargs):
            started = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                with lock:
                    totals[__label] += time.perf_counter() - started

        originals.append((target, attribute, original))
        setattr(target, attribute, timed)
    try:
        started = time.perf_counter()
        promotion.sync(spec)
        wall = time.perf_counter() - started
    finally:
        for target, attribute, original in originals:
            setattr(target, attribute, original)
    return totals, wall


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--models", type=int, default=200)
    arguments.add_argument("--repeats", type=int, default=3)
    args = arguments.parse_args()
    quiet_logs()
    machine = machine_info()
    from mlflow_triton import promotion
    from mlflow_triton.local.stack import LocalStack
    from mlflow_triton.promotion import load_spec, sync
    from mlflow_triton.server import TritonServer

    traffic = S3Traffic()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-sync-"))
    stack = LocalStack(workdir / "stack", replicas=1).start()
    stubs = [StubTriton(), StubTriton()]
    try:
        with stack.exported_env():
            started = time.perf_counter()
            names = register_models(args.models, workdir)
            spec = load_spec(
                models=names, alias=ALIAS, repository=stack.model_repository,
                triton=",".join(s.url for s in stubs), config={"instance_kind": "cpu"}, smoke_test=False,
            )  # fmt: skip
            shards = [dataclasses.replace(spec, models=spec.models[i::8]) for i in range(8)]
            with ThreadPoolExecutor(max_workers=8) as pool:
                first = [m for report in pool.map(sync, shards) for m in report.models]
            assert all(m.action == "published" for m in first), [m.describe() for m in first if m.action != "published"]
            setup_s = time.perf_counter() - started
            print(f"setup: {args.models} registered and published in {setup_s:.0f} s", flush=True)

            runs, reports = [], []
            for _ in range(args.repeats):
                traffic.reset()
                started = time.perf_counter()
                report = sync(spec)
                runs.append(time.perf_counter() - started)
                reports.append((report, traffic.snapshot()))
            # The same no-op sync with one worker, when sync() reconciles models concurrently.
            sequential = None
            if hasattr(promotion, "SYNC_WORKERS"):
                workers, promotion.SYNC_WORKERS = promotion.SYNC_WORKERS, 1
                try:
                    started = time.perf_counter()
                    assert all(m.action == "unchanged" for m in sync(spec).models)
                    sequential = time.perf_counter() - started
                finally:
                    promotion.SYNC_WORKERS = workers
            report, moved = reports[-1]
            actions = sorted({m.action for r, _ in reports for m in r.models})
            phases, profiled = time_phases(spec)

            # The stub vs a real tritonserver for the one Triton call a no-op sync makes per model.
            real = stack.triton_urls[0]
            name = names[0]
            TritonServer(real).load_model(name)
            real_ready = ready_check_latency(real, name)
            stub_ready = ready_check_latency(stubs[0].url, name)
    finally:
        for stub in stubs:
            stub.close()
        stack.stop()

    seconds = median(runs)
    print(f"\nNo-op sync of {args.models} registered models (alias {ALIAS!r}), 2 replicas, median of "
          f"{args.repeats} (machine: {machine['nproc']} x {machine['cpu']})")  # fmt: skip
    print(table(
        [[args.models, f"{seconds:.2f} s", f"{1000 * seconds / args.models:.1f} ms",
          ", ".join(actions), moved["sent"] + moved["received"], moved["copy_calls"]]],
        ["models", "sync wall time (target <= 5 s)", "per model", "actions", "S3 body bytes", "copies"],
    ))  # fmt: skip
    print(f"runs: {[round(r, 2) for r in runs]}")
    if sequential is not None:
        print(f"the same sync with SYNC_WORKERS=1: {sequential:.2f} s")
    print(f"\nWhere one no-op sync spends its time ({profiled:.2f} s wall; seconds summed over worker threads):")
    for label, value in phases.items():
        print(f"  {label:52} {value:6.2f} s")
    print(f"\nready check, new client per call: real tritonserver {1000 * real_ready:.2f} ms, "
          f"stub {1000 * stub_ready:.2f} ms (median of 200)")  # fmt: skip
    write_json(args.json, {
        "benchmark": "sync", "machine": machine, "models": args.models, "seconds": seconds,
        "runs": runs, "per_model_ms": 1000 * seconds / args.models, "actions": actions,
        "sequential_seconds": sequential,
        "s3_body_bytes": moved["sent"] + moved["received"], "copy_calls": moved["copy_calls"],
        "phases": phases, "profiled_seconds": profiled, "setup_seconds": setup_s,
        "ready_ms_real_triton": 1000 * real_ready, "ready_ms_stub": 1000 * stub_ready,
        "replicas": 2, "triton": "stub HTTP server (see docstring)",
    })  # fmt: skip


if __name__ == "__main__":
    main()
