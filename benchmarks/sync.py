"""Sync at scale: a no-op ``sync`` and a ``watch`` round over 1,000 registered models, 2 replicas.

Setup (not timed): a real MLflow server, moto S3 and one real tritonserver from the embedded
stack; one ONNX model logged once and registered as N models, each with alias ``production``
-> version 1. The first ``--publish`` models are published by a real ``sync`` (smoke test
off); the rest of the repository is cloned from the first one's folder with only the model
name changed in ``config.pbtxt``, the provenance and the history (publishing 1,000 models
through the full path takes ~7 minutes here and is not what is measured). The clone is
checked by the measurement itself: every model must come out ``unchanged``, i.e. its
provenance names its own registered model, version and settings.

Triton. A round asks each replica once which model versions it has loaded
(``GET /v2/models/stats``, :meth:`TritonCluster.ready_models`) and asks nothing per model
that is listed. It used to ask for the repository index (``POST /v2/repository/index``):
on the real tritonserver with an S3 repository that call polls the repository, one listing
and one HEAD per model folder (2,007 S3 requests for 1,000 folders in moto's log), even with
``{"ready": true}``; both calls are timed below on the real server over the 1,000 unloaded
folders. The replicas of the measured rounds are a stub HTTP server answering the v2
endpoints, because the answer that matters, 1,000 models loaded, would need 1,000 loaded
models: on this tritonserver, 1,000 Python-backend stub processes (~75 MB each).

Counted per round: registry REST calls (at MLflow's ``http_request``), S3 calls (boto3
``before-call.s3.*`` events), Triton calls (at the stub). Measured: wall time of the one-shot
``sync`` (fresh ETag cache, as ``mlflow-triton sync`` from cron) and of a ``watch`` round
(the watch loop's cache kept from the previous round). Target: <= 5 s, and call counts that
do not grow per model where a batch call exists.

Run::

    .venv/bin/python benchmarks/sync.py                 # ~8 minutes on 2 loaded cores
    .venv/bin/python benchmarks/sync.py --models 200
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _common import machine_info, median, parser, quiet_logs, table, write_json

ALIAS = "production"
_READY = re.compile(r"^/v2/models/(?P<name>[^/]+)(/versions/(?P<version>[^/]+))?/ready$")
_CONTROL = re.compile(r"^/v2/repository/models/(?P<name>[^/]+)/(?P<action>load|unload)$")


class StubTriton:
    """A loopback HTTP server that answers the Triton v2 calls the publisher and sync make."""

    def __init__(self) -> None:
        loaded: set[str] = set()
        self.loaded = loaded
        calls: Counter[str] = Counter()
        self.calls = calls

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
                calls["GET " + ("/v2/models/*/ready" if _READY.match(path) else path)] += 1
                if path in ("/v2/health/live", "/v2/health/ready"):
                    return self._reply(200)
                match = _READY.match(path)
                if match:
                    return self._reply(200 if match["name"] in loaded else 400)
                if path == "/v2/models/stats":
                    stats = [{"name": n, "version": "1"} for n in sorted(loaded)]
                    return self._reply(200, json.dumps({"model_stats": stats}).encode())
                return self._reply(404, b'{"error": "not found"}')

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0) or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?")[0]
                match = _CONTROL.match(path)
                calls["POST " + (f"/v2/repository/models/*/{match['action']}" if match else path)] += 1
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


def register_models(count: int, workdir: Path, prefix: str = "sync-bench") -> list[str]:
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
    names = [f"{prefix}-{i:04d}" for i in range(count)]

    def register(name: str) -> None:
        client.create_registered_model(name)
        version = client.create_model_version(
            name, source, run_id=run.info.run_id, model_id=info.model_id, await_creation_for=0
        )  # the sqlite registry creates it READY at once: no polling
        client.set_registered_model_alias(name, ALIAS, version.version)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(register, names))
    return names


def clone_deployments(store, template: str, names: list[str]) -> int:
    """Copy ``template``'s repository folder to each of ``names``: text files with the model
    name replaced, binaries copied server-side. Returns the objects written."""
    objects = [o for o in store.list_objects(f"{template}/") if not o.key.endswith(".lease")]

    def clone(name: str) -> int:
        for listed in objects:
            key = f"{name}/{listed.key}"
            if listed.key.endswith((".pbtxt", ".json")):
                store.write_bytes(key, store.read_bytes(f"{template}/{listed.key}").replace(template.encode(), name.encode()))
            else:
                store.client.copy_object(
                    Bucket=store.bucket, Key=store._key(key),
                    CopySource={"Bucket": store.bucket, "Key": store._key(f"{template}/{listed.key}")},
                )  # fmt: skip
        return len(objects)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return sum(pool.map(clone, names))


class RegistryCalls:
    """REST calls of MLflow clients in this process, by endpoint (wraps ``http_request``)."""

    def __init__(self) -> None:
        import mlflow.utils.rest_utils as rest

        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        original = rest.http_request

        def counted(host_creds, endpoint, method, *args, **kwargs):
            with self._lock:
                self.calls[f"{method} {endpoint.split('?')[0]}"] += 1
            return original(host_creds, endpoint, method, *args, **kwargs)

        rest.http_request = counted


class S3Calls:
    """S3 API calls of every boto3 client of the default session (``before-call.s3.*``)."""

    def __init__(self) -> None:
        import boto3

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        boto3.DEFAULT_SESSION.events.register("before-call.s3.*", self._count)

    def _count(self, event_name: str, **_: Any) -> None:
        with self._lock:
            self.calls[event_name.rsplit(".", 1)[-1]] += 1


class CallCounts:
    """Registry, S3 and Triton calls made between two :meth:`take` calls."""

    def __init__(self, stubs: list[StubTriton]) -> None:
        self.registry, self.s3, self.stubs = RegistryCalls(), S3Calls(), stubs

    def take(self) -> dict[str, dict[str, int]]:
        taken = {
            "registry": dict(self.registry.calls), "s3": dict(self.s3.calls),
            "triton (2 replicas)": dict(sum((s.calls for s in self.stubs), Counter())),
        }  # fmt: skip
        for counter in (self.registry.calls, self.s3.calls, *(s.calls for s in self.stubs)):
            counter.clear()
        return taken


def ready_check_latency(url: str, name: str, calls: int = 200) -> float:
    """Median seconds of one ``is_model_ready`` as the sync makes it (new client per server)."""
    from mlflow_triton.fleet.server import TritonServer

    times = []
    for _ in range(calls):
        started = time.perf_counter()
        with TritonServer(url) as server:
            assert server.is_model_ready(name, 1)
        times.append(time.perf_counter() - started)
    return median(times)


def index_latency(url: str, calls: int = 5) -> tuple[float, int, Counter, float, int]:
    """Median seconds of one repository index on ``url``, its length and its states; then
    the median seconds of one statistics call (loaded models) and how many it lists."""
    from mlflow_triton.fleet.server import TritonServer

    times, index, stats_times, loaded = [], [], [], set()
    for _ in range(calls):
        with TritonServer(url, timeout_s=120.0) as server:
            started = time.perf_counter()
            index = server.repository_index()
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
            loaded = server.loaded_models()
            stats_times.append(time.perf_counter() - started)
    states = Counter(e.get("state", "UNAVAILABLE") for e in index)
    return median(times), len(index), states, median(stats_times), len(loaded)


PHASES = {  # label: (object, attribute) wrapped with a timer; missing ones are skipped
    "registry: aliases of all models (one search)": ("promotion", "_all_aliases"),
    "registry: alias lookups (one call per model)": ("promotion", "_alias_version"),
    "publisher/store creation": ("ModelPublisher", "for_config"),
    "repository listing (paginated, per round)": ("RepositoryCache", "snapshot"),
    "repository reads (S3 GET, only changed ETags)": ("RepositoryCache", "read"),
    "repository reads per model (one-model rounds)": ("ModelPublisher", "read_state"),
    "Triton: loaded models per replica (one call each)": ("TritonCluster", "ready_models"),
    "Triton: ready checks / repairs": ("ModelPublisher", "repair"),
    "per model, all of the above included": ("_Round", "reconcile"),
}


def time_phases(run) -> tuple[dict[str, float], float]:
    """Seconds spent in each phase during ``run()``, summed over the worker threads."""
    from mlflow_triton.fleet.server import TritonCluster
    from mlflow_triton.promotion import reconcile as promotion
    from mlflow_triton.repository.snapshot import RepositoryCache
    from mlflow_triton.rollout.publisher import ModelPublisher

    owners = {"promotion": promotion, "ModelPublisher": ModelPublisher, "TritonCluster": TritonCluster,
              "RepositoryCache": RepositoryCache, "_Round": promotion._Round}  # fmt: skip
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
        run()
        wall = time.perf_counter() - started
    finally:
        for target, attribute, original in originals:
            setattr(target, attribute, original)
    return totals, wall


def watch_rounds(spec, rounds: int) -> tuple[list[float], list[Any], list[dict[str, Any]]]:
    """Run ``watch`` for ``rounds`` rounds: each round's seconds, report and call counts."""
    from mlflow_triton.promotion import watch

    times, reports, counts = [], [], []
    marks = [time.perf_counter()]

    def on_report(report) -> None:
        now = time.perf_counter()
        times.append(now - marks[-1])
        reports.append(report)
        counts.append(COUNTS.take())
        marks.append(time.perf_counter())  # the pause between rounds is not counted

    COUNTS.take()
    watch(spec, interval_s=0.001, max_rounds=rounds, on_report=on_report)
    return times, reports, counts


COUNTS: CallCounts


def main() -> None:
    global COUNTS
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--models", type=int, default=1000)
    arguments.add_argument("--publish", type=int, default=8, help="models published for real (the rest cloned)")
    arguments.add_argument("--repeats", type=int, default=3)
    args = arguments.parse_args()
    quiet_logs()
    machine = machine_info()
    from mlflow_triton.fleet.server import TritonServer
    from mlflow_triton.local.stack import LocalStack
    from mlflow_triton.promotion import load_spec, sync
    from mlflow_triton.promotion import reconcile as promotion
    from mlflow_triton.repository.s3_store import S3Store
    from mlflow_triton.repository.snapshot import RepositoryCache

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-sync-"))
    stack = LocalStack(workdir / "stack", replicas=1).start()
    stubs = [StubTriton(), StubTriton()]
    COUNTS = CallCounts(stubs)
    try:
        with stack.exported_env():
            started = time.perf_counter()
            names = register_models(args.models, workdir)
            register_s = time.perf_counter() - started
            spec = load_spec(
                models=names, alias=ALIAS, repository=stack.model_repository,
                triton=",".join(s.url for s in stubs), config={"instance_kind": "cpu"}, smoke_test=False,
            )  # fmt: skip
            published = dataclasses.replace(spec, models=spec.models[: args.publish])
            first = sync(published).models
            assert all(m.action == "published" for m in first), [m.describe() for m in first]
            store = S3Store(stack.model_repository, endpoint_url=stack.s3_endpoint)
            cloned = clone_deployments(store, names[0], names[args.publish :])
            for stub in stubs:
                stub.loaded.update(names)  # what the replicas would answer with every model loaded
            setup_s = time.perf_counter() - started
            print(f"setup: {args.models} registered in {register_s:.0f} s, {args.publish} published, "
                  f"{cloned} objects cloned; {setup_s:.0f} s", flush=True)  # fmt: skip

            # One-shot sync (fresh cache each time, like `mlflow-triton sync` from cron).
            runs, sync_counts = [], []
            COUNTS.take()
            for _ in range(args.repeats):
                started = time.perf_counter()
                report = sync(spec)
                runs.append(time.perf_counter() - started)
                sync_counts.append(COUNTS.take())
                assert all(m.action == "unchanged" for m in report.models), \
                    [m.describe() for m in report.models if m.action != "unchanged"][:5]
            # watch: the first round fills the cache, the next ones are the steady state.
            watch_times, watch_reports, watch_counts = watch_rounds(spec, args.repeats + 1)
            for report in watch_reports:
                assert all(m.action == "unchanged" for m in report.models)
            sequential = None
            workers, promotion.SYNC_WORKERS = promotion.SYNC_WORKERS, 1
            try:
                started = time.perf_counter()
                assert all(m.action == "unchanged" for m in sync(spec).models)
                sequential = time.perf_counter() - started
            finally:
                promotion.SYNC_WORKERS = workers
            phases, profiled = time_phases(lambda: sync(spec))
            warm = RepositoryCache()
            sync(spec, cache=warm)
            watch_phases, watch_profiled = time_phases(lambda: sync(spec, cache=warm))

            # The real tritonserver, same S3 repository: the index over N unloaded folders.
            real = stack.triton_urls[0]
            TritonServer(real).load_model(names[0])
            index_s, index_len, index_states, stats_s, stats_len = index_latency(real)
            real_ready = ready_check_latency(real, names[0])
            stub_ready = ready_check_latency(stubs[0].url, names[0])
            stub_index = median([_timed(lambda: TritonServer(stubs[0].url).repository_index()) for _ in range(5)])
    finally:
        for stub in stubs:
            stub.close()
        stack.stop()

    seconds, watch_s = median(runs), median(watch_times[1:])
    print(f"\n{args.models} registered models (alias {ALIAS!r}), all serving, 2 replicas; median of "
          f"{args.repeats} (machine: {machine['nproc']} x {machine['cpu']})")  # fmt: skip

    def calls(counts: dict[str, dict[str, int]]) -> str:
        return "; ".join(f"{k}: " + ", ".join(f"{op} {n}" for op, n in sorted(v.items())) for k, v in counts.items())

    print(table(
        [["no-op sync (cold cache)", f"{seconds:.2f} s", f"{1000 * seconds / args.models:.2f} ms"],
         ["watch round (warm cache)", f"{watch_s:.2f} s", f"{1000 * watch_s / args.models:.2f} ms"],
         ["first watch round (cold)", f"{watch_times[0]:.2f} s", ""]],
        ["round", "wall time (target <= 5 s)", "per model"],
    ))  # fmt: skip
    print(f"sync runs: {[round(r, 2) for r in runs]}; watch rounds: {[round(r, 2) for r in watch_times]}")
    print(f"calls, one no-op sync: {calls(sync_counts[-1])}")
    print(f"calls, one watch round: {calls(watch_counts[-1])}")
    print(f"the same sync with SYNC_WORKERS=1: {sequential:.2f} s")
    print(f"\nWhere one no-op sync spends its time ({profiled:.2f} s wall; seconds summed over worker threads):")
    for label, value in phases.items():
        print(f"  {label:52} {value:6.2f} s")
    print(f"\nWhere one watch round spends its time ({watch_profiled:.2f} s wall):")
    for label, value in watch_phases.items():
        print(f"  {label:52} {value:6.2f} s")
    print(f"\nreal tritonserver, {args.models} model folders, 1 loaded: repository index over {index_len} entries "
          f"({dict(index_states)}) {1000 * index_s:.0f} ms; loaded models (stats) {1000 * stats_s:.1f} ms, "
          f"{stats_len} listed (medians of 5); stub index {1000 * stub_index:.1f} ms")
    print(f"ready check, new client per call: real tritonserver {1000 * real_ready:.2f} ms, "
          f"stub {1000 * stub_ready:.2f} ms (median of 200)")  # fmt: skip
    write_json(args.json, {
        "benchmark": "sync", "machine": machine, "models": args.models, "published_for_real": args.publish,
        "seconds": seconds, "runs": runs, "per_model_ms": 1000 * seconds / args.models,
        "watch_seconds": watch_s, "watch_rounds": watch_times, "sequential_seconds": sequential,
        "calls_sync": sync_counts[-1], "calls_watch_round": watch_counts[-1],
        "phases": phases, "profiled_seconds": profiled, "setup_seconds": setup_s,
        "watch_phases": watch_phases, "watch_profiled_seconds": watch_profiled,
        "real_triton_index_ms": 1000 * index_s, "real_triton_index_entries": index_len,
        "real_triton_index_states": dict(index_states), "stub_index_ms": 1000 * stub_index,
        "real_triton_stats_ms": 1000 * stats_s, "real_triton_stats_listed": stats_len,
        "ready_ms_real_triton": 1000 * real_ready, "ready_ms_stub": 1000 * stub_ready,
        "replicas": 2, "triton": "stub HTTP server for the loaded models; index and stats also timed on the real server",
    })  # fmt: skip


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
