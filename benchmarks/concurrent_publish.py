"""Throughput with many deployments: 50 small models published with 8 workers vs 1.

Setup (not timed): the embedded stack (moto S3, MLflow server with artifacts on the same S3,
one real tritonserver); one tiny ONNX model (``tests/models.py`` ``Scorer``, < 1 KB of
weights) logged once and registered as N models with alias ``production`` -> 1.

Measured: ``mlflow_triton.promotion.sync`` publishing the N models into fresh deployments,
in one process, with the reconcile worker pool at ``SYNC_WORKERS`` = 1 and = 8 (each run
publishes to its own deployment names; the order alternates over ``--repeats``). Every
publish takes its deployment's lease, copies the model server-side from MLflow's S3
artifacts, writes config, provenance and history, loads it under a staging name, then under
its own name, on every replica (smoke test off: the stub cannot infer). Reported: models/s
and the ratio 8 workers / 1, and the signs of contention:

* ``Connection pool is full`` warnings of urllib3 (boto3's and MLflow's HTTP pools), counted
  with a logging handler;
* boto3 S3 clients (``S3Store`` objects) created per run: one per repository when workers
  share the round's store, as they should;
* lease acquisition: seconds spent in ``Lease.acquire`` and the retries (``try_acquire``
  calls that found the lease held): 0 expected, every model has its own lease.

Triton. Main figures use two stub replicas answering the v2 endpoints (see ``sync.py``):
loading a model on the CPU tritonserver here starts a Python-backend stub process (~1-2 s of
CPU on 2 shared cores), so with the real server 50 loads would measure Triton competing with
the publisher for the same 2 cores, not the publisher's own concurrency. The same comparison
also runs on the real tritonserver at ``--real-models`` (default 8) models, to show what the
loads do to it.

Run::

    .venv/bin/python benchmarks/concurrent_publish.py          # ~9 minutes on 2 loaded cores
    .venv/bin/python benchmarks/concurrent_publish.py --models 20 --real-models 0
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import machine_info, median, parser, quiet_logs, table, write_json
from sync import ALIAS, StubTriton, register_models

WORKERS = (1, 8)


class Contention:
    """Counts what shows workers getting in each other's way, between two :meth:`take` calls."""

    def __init__(self) -> None:
        from mlflow_triton.repository import lease as lease_module
        from mlflow_triton.repository import s3_store

        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.lease_seconds = 0.0
        counts, lock, contention = self.counts, self._lock, self

        class PoolFull(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if str(record.msg).startswith("Connection pool is full"):  # urllib3's template
                    with lock:
                        counts["pool full warnings"] += 1

        pool_logger = logging.getLogger("urllib3.connectionpool")
        pool_logger.addHandler(PoolFull(logging.WARNING))
        pool_logger.setLevel(logging.WARNING)

        store_init = s3_store.S3Store.__init__

        def counted_init(store, *args: Any, **kwargs: Any) -> None:
            with lock:
                counts["S3 stores (boto3 clients) created"] += 1
            store_init(store, *args, **kwargs)

        s3_store.S3Store.__init__ = counted_init

        acquire, try_acquire = lease_module.Lease.acquire, lease_module.Lease.try_acquire

        def timed_acquire(lease, *args: Any, **kwargs: Any):
            started = time.perf_counter()
            try:
                return acquire(lease, *args, **kwargs)
            finally:
                with lock:
                    counts["lease acquisitions"] += 1
                    contention.lease_seconds += time.perf_counter() - started

        def counted_try(lease, *args: Any, **kwargs: Any) -> bool:
            won = try_acquire(lease, *args, **kwargs)
            if not won:
                with lock:
                    counts["lease retries (held by another)"] += 1
            return won

        lease_module.Lease.acquire = timed_acquire
        lease_module.Lease.try_acquire = counted_try

    def take(self) -> dict[str, Any]:
        with self._lock:
            taken = {**self.counts, "lease acquire seconds (sum)": round(self.lease_seconds, 3)}
            self.counts.clear()
            self.lease_seconds = 0.0
        return taken


def publish_all(names: list[str], prefix: str, workers: int, triton: str, repository: str) -> tuple[float, Any]:
    """Publish every registered model in ``names`` to ``{prefix}-{name}``: (seconds, report)."""
    from mlflow_triton.promotion import load_spec, sync
    from mlflow_triton.promotion import reconcile as promotion

    spec = load_spec(
        models=[f"{name}={prefix}-{name}" for name in names], alias=ALIAS, repository=repository,
        triton=triton, config={"instance_kind": "cpu"}, smoke_test=False,
    )  # fmt: skip
    saved, promotion.SYNC_WORKERS = promotion.SYNC_WORKERS, workers
    try:
        started = time.perf_counter()
        report = sync(spec)
        seconds = time.perf_counter() - started
    finally:
        promotion.SYNC_WORKERS = saved
    failed = [m.describe() for m in report.models if m.action != "published"]
    assert not failed, failed[:3]
    return seconds, report


def compare(names: list[str], label: str, triton: str, repository: str, repeats: int, contention: Contention,
            unload=None) -> dict[str, Any]:  # fmt: skip
    """Publish ``names`` with each worker count, ``repeats`` times, alternating the order."""
    seconds: dict[int, list[float]] = {w: [] for w in WORKERS}
    signs: dict[int, list[dict[str, Any]]] = {w: [] for w in WORKERS}
    for repeat in range(repeats):
        for workers in WORKERS if repeat % 2 == 0 else WORKERS[::-1]:
            prefix = f"{label}-w{workers}-r{repeat}"
            contention.take()
            elapsed, _ = publish_all(names, prefix, workers, triton, repository)
            seconds[workers].append(elapsed)
            signs[workers].append(contention.take())
            print(f"  {label}: {len(names)} models, {workers} worker(s): {elapsed:.2f} s", flush=True)
            if unload is not None:
                unload([f"{prefix}-{name}" for name in names])
    rates = {w: len(names) / median(s) for w, s in seconds.items()}
    return {
        "models": len(names), "seconds": seconds, "models_per_s": rates,
        "ratio": rates[WORKERS[-1]] / rates[WORKERS[0]], "contention": signs,
    }  # fmt: skip


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--models", type=int, default=50)
    arguments.add_argument("--real-models", type=int, default=8, help="models for the real-tritonserver run (0: skip)")
    arguments.add_argument("--repeats", type=int, default=2)
    args = arguments.parse_args()
    quiet_logs()
    machine = machine_info()
    from mlflow_triton.fleet.server import TritonServer
    from mlflow_triton.local.stack import LocalStack

    contention = Contention()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-concurrent-"))
    stack = LocalStack(workdir / "stack", replicas=1).start()
    stubs = [StubTriton(), StubTriton()]
    results: dict[str, Any] = {}
    try:
        with stack.exported_env():
            names = register_models(max(args.models, args.real_models), workdir, prefix="cp")
            print(f"{len(names)} models registered", flush=True)
            stub_urls = ",".join(s.url for s in stubs)
            results["stub"] = compare(
                names[: args.models], "stub", stub_urls, stack.model_repository, args.repeats, contention
            )
            if args.real_models:
                real = stack.triton_urls[0]

                def unload(deployments: list[str]) -> None:  # keep 2 cores for the next run
                    with TritonServer(real) as server:
                        for deployment in deployments:
                            server.unload_model(deployment)

                results["real"] = compare(
                    names[: args.real_models], "real", real, stack.model_repository, args.repeats, contention,
                    unload,
                )  # fmt: skip
    finally:
        for stub in stubs:
            stub.close()
        stack.stop()

    rows = []
    for triton, result in results.items():
        replicas = "2 stub replicas" if triton == "stub" else "1 real tritonserver"
        for workers in WORKERS:
            signs = result["contention"][workers][-1]
            rows.append([
                f"{result['models']} models, {replicas}", workers, f"{median(result['seconds'][workers]):.2f} s",
                f"{result['models_per_s'][workers]:.1f}",
                signs.get("pool full warnings", 0), signs.get("S3 stores (boto3 clients) created", 0),
                f"{signs.get('lease retries (held by another)', 0)} / {signs['lease acquire seconds (sum)']:.2f} s",
            ])  # fmt: skip
    print(f"\nConcurrent publish, tiny ONNX, copy path (machine: {machine['nproc']} x {machine['cpu']})")
    print(table(rows, ["run", "workers", "wall (median)", "models/s", "pool-full warnings", "S3 stores",
                       "lease retries / acquire s"]))  # fmt: skip
    for triton, result in results.items():
        print(f"{triton}: {WORKERS[-1]} workers / 1 = {result['ratio']:.2f}x; runs {result['seconds']}")
    write_json(args.json, {"benchmark": "concurrent_publish", "machine": machine, "results": results,
                           "workers": list(WORKERS), "repeats": args.repeats})  # fmt: skip


if __name__ == "__main__":
    main()
