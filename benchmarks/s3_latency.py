"""S3 at its real latency: requests and wall time of sync, watch, a no-op update and a rollback.

Every S3 request of the embedded stack (this process, the MLflow server, tritonserver) goes
through :mod:`s3_proxy`, which delays it (``--delays``: 0 and 20 ms; AWS S3 answers in 10-30 ms)
and counts it by operation and client. Setup runs at delay 0. Each operation is measured at
each delay in turn, side by side: the difference is what S3's latency costs it, apart from
moto's and this machine's own speed (moto lists a bucket in time proportional to its size, and
the CPUs may be shared).

Measured, in this order:

1. **small repository** (the deployment below and ``--publish`` others): a no-op ``update``
   (``update_deployment`` with the registry version and settings that serve: the publisher
   answers "unchanged") and a ``rollback`` to the previous version (verified on the real
   tritonserver), each ``--repeats`` times (an untimed update re-publishes between rollbacks);
2. **1,000 models** (``--models``; the setup of ``benchmarks/sync.py``: one ONNX model
   registered N times, ``--publish`` published for real, the rest cloned, 2 stub replicas
   that answer every model loaded): a one-shot ``sync`` (fresh ETag cache, as from cron) and
   ``watch`` rounds (cache kept);
3. **the same no-op update and rollback** once more (at the highest delay), with the N
   deployments in the repository that tritonserver reads.

Each no-op update and rollback is also measured as it was before issue #19's change, side by
side: ``Rollout.staging_left_over`` asking each replica for its repository index (which makes
tritonserver poll every model folder of the repository: two S3 requests per folder, in series)
instead of its loaded models (one statistics call, what the package does now).

Printed: wall time (median) at each delay, the S3 requests of each operation by client and
operation (``boto3``: this process, including MLflow's artifact client; ``triton``:
tritonserver's reads), how many of this process's requests ran in series (the longest chain of
requests each sent after the previous one's answer: the latency cost is about that many times
the delay, whatever the CPU load), registry REST calls, and the timed boto3 requests of one
no-op update and one rollback. Targets at 20 ms: sync <= 10 s, watch round <= 5 s, no-op
update <= 1 s.

Run::

    .venv/bin/python benchmarks/s3_latency.py                 # ~10 minutes on 2 loaded cores
    .venv/bin/python benchmarks/s3_latency.py --models 100 --delays 20 --no-large-repository
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from _common import machine_info, median, parser, quiet_logs, table, write_json
from s3_proxy import ProxiedStack
from sync import ALIAS, RegistryCalls, StubTriton, clone_deployments, register_models

DEPLOYMENT = "latency-bench"


class S3CallLog:
    """boto3's S3 calls in this process: ``(start, end, operation, key)``, seconds since
    :meth:`start`, from botocore's events (the request context carries each call's start)."""

    def __init__(self) -> None:
        import boto3

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        self.enabled = False
        self.calls: list[tuple[float, float, str, str]] = []
        self._started = 0.0
        self._lock = threading.Lock()
        events = boto3.DEFAULT_SESSION.events
        events.register("before-parameter-build.s3.*", self._begin)
        events.register("after-call.s3.*", self._end)
        events.register("after-call-error.s3.*", self._end)

    def start(self) -> None:
        with self._lock:
            self.calls, self._started, self.enabled = [], time.perf_counter(), True

    def stop(self) -> list[tuple[float, float, str, str]]:
        with self._lock:
            self.enabled = False
            return sorted(self.calls)

    def _begin(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        if self.enabled:
            where = params.get("Key") or params.get("Prefix") or params.get("Bucket", "")
            context["s3_latency_bench"] = (time.perf_counter() - self._started, model.name, str(where))

    def _end(self, context: dict[str, Any], **_: Any) -> None:
        begun = context.pop("s3_latency_bench", None)
        if begun is not None and self.enabled:
            started, operation, where = begun
            with self._lock:
                self.calls.append((started, time.perf_counter() - self._started, operation, where))


def serial_round_trips(calls: list[tuple[float, float, str, str]]) -> int:
    """The longest chain of calls each of which started after the previous one ended: the
    round trips an operation waits for one after another (its latency cost is about this
    many times the delay of one request, whatever the CPU load)."""
    ordered = sorted(calls)
    by_end = sorted(range(len(ordered)), key=lambda i: ordered[i][1])
    depth, best, done = [0] * len(ordered), 0, 0
    for i, (started, _, _, _) in enumerate(ordered):
        while done < len(ordered) and ordered[by_end[done]][1] <= started:
            best = max(best, depth[by_end[done]])
            done += 1
        depth[i] = best + 1
    return max(depth, default=0)


class Measure:
    """Runs an operation at one delay and collects its wall time and requests."""

    def __init__(self, stack: Any, registry: RegistryCalls, log: S3CallLog) -> None:
        self.stack, self.registry, self.log = stack, registry, log

    def __call__(self, operation: Callable[[], Any], delay_ms: float, keep_log: bool = False) -> dict[str, Any]:
        proxy = self.stack.proxy
        proxy.set_delay(delay_ms)
        proxy.take()
        self.registry.calls.clear()
        self.log.start()
        started = time.perf_counter()
        try:
            result = operation()
        finally:
            seconds = time.perf_counter() - started
            calls = self.log.stop()
            proxy.set_delay(0)
        counts = proxy.take()
        return {
            "seconds": seconds, "result": result, "s3": counts,
            "s3_total": {family: sum(ops.values()) for family, ops in counts.items()},
            "serial_round_trips": serial_round_trips(calls),
            "registry": dict(self.registry.calls), "log": calls if keep_log else None,
        }  # fmt: skip


def update_and_rollback(
    measure: Measure, client: Any, spec: Any, uri: str, config: dict, repeats: int, delays: list[float],
    rollback_too: bool = True,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """``repeats`` x, at each delay: a no-op update, then a rollback; an untimed update makes
    ``config`` serve again after each rollback."""
    from mlflow_triton.promotion import rollback

    runs: dict[str, dict[float, list]] = {"update": {d: [] for d in delays}, "rollback": {d: [] for d in delays}}
    for attempt in range(repeats):
        for delay in delays:
            log = attempt == 0 and delay == delays[-1]
            update = measure(lambda: client.update_deployment(DEPLOYMENT, uri, config=config), delay, log)
            assert update["result"]["changed"] is False, update["result"]
            runs["update"][delay].append(update)
            if not rollback_too:
                continue
            back = measure(lambda: rollback(spec, DEPLOYMENT), delay, log)
            assert back["result"].changed, back["result"]
            runs["rollback"][delay].append(back)
            client.update_deployment(DEPLOYMENT, uri, config=config)  # serves `config` again (untimed)
    return {op: {str(d): _summary(r) for d, r in by_delay.items() if r} for op, by_delay in runs.items()}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    first = runs[0]
    return {
        "seconds": median([r["seconds"] for r in runs]), "runs": [round(r["seconds"], 3) for r in runs],
        "s3": first["s3"], "s3_total": first["s3_total"], "registry": first["registry"], "log": first["log"],
        "serial_round_trips": first["serial_round_trips"],
    }  # fmt: skip


def sync_and_watch(measure: Measure, spec: Any, repeats: int, delays: list[float]) -> dict[str, Any]:
    """One-shot syncs (fresh cache), then ``watch`` rounds (cache kept), at each delay in turn."""
    from mlflow_triton.promotion import sync, watch

    syncs: dict[float, list] = {d: [] for d in delays}
    for _ in range(repeats):
        for delay in delays:
            run = measure(lambda: sync(spec), delay)
            assert all(m.action == "unchanged" for m in run["result"].models), \
                [m.describe() for m in run["result"].models if m.action != "unchanged"][:5]
            syncs[delay].append(run)
    proxy = measure.stack.proxy
    order = [delays[-1]] + [d for _ in range(repeats) for d in delays]  # the first round fills the cache
    rounds: list[dict[str, Any]] = []
    marks: list[float] = []

    def on_report(report) -> None:
        seconds = time.perf_counter() - marks[-1]
        calls = measure.log.stop()
        proxy.set_delay(0)  # the pause between rounds is not measured
        counts = proxy.take()
        assert all(m.action == "unchanged" for m in report.models)
        delay = order[len(rounds)]
        rounds.append({"delay": delay, "seconds": seconds, "s3": counts, "serial_round_trips": serial_round_trips(calls),
                       "s3_total": {k: sum(v.values()) for k, v in counts.items()}})  # fmt: skip
        if len(rounds) < len(order):
            proxy.set_delay(order[len(rounds)])
        measure.log.start()
        marks.append(time.perf_counter())

    proxy.set_delay(order[0])
    proxy.take()
    measure.log.start()
    marks.append(time.perf_counter())
    watch(spec, interval_s=0.001, max_rounds=len(order), on_report=on_report)
    measure.log.stop()
    proxy.set_delay(0)
    steady = rounds[1:]
    return {
        "sync": {str(d): _summary(r) for d, r in syncs.items()},
        "watch": {
            str(d): {
                "seconds": median([r["seconds"] for r in steady if r["delay"] == d]),
                "runs": [round(r["seconds"], 3) for r in steady if r["delay"] == d],
                "s3": next(r["s3"] for r in steady if r["delay"] == d),
                "serial_round_trips": next(r["serial_round_trips"] for r in steady if r["delay"] == d),
            }
            for d in delays
        },
        "watch_cold_first_round": {"delay": order[0], "seconds": rounds[0]["seconds"], "s3": rounds[0]["s3"]},
    }  # fmt: skip


def sync_by_prefetch_workers(measure: Measure, spec: Any, repeats: int, delay: float, workers: list[int]) -> dict:
    """One-shot syncs at ``delay`` with the round reading ``w`` deployments' states at once, for
    each ``w`` in turn (8: as many as the round's workers, which read them one by one before
    the reads moved ahead of them). Empty where the package reads no states ahead."""
    from mlflow_triton.promotion import sync
    from mlflow_triton.repository import snapshot

    if not hasattr(snapshot, "PREFETCH_WORKERS"):
        return {}
    default, runs = snapshot.PREFETCH_WORKERS, {w: [] for w in workers}
    try:
        for _ in range(repeats):
            for count in workers:
                snapshot.PREFETCH_WORKERS = count
                runs[count].append(measure(lambda: sync(spec), delay))
    finally:
        snapshot.PREFETCH_WORKERS = default
    return {str(w): _summary(r) for w, r in runs.items()}


def staging_check_by_repository_index():
    """The staging check as it was (``Rollout.staging_left_over`` before issue #19): each
    replica's repository index instead of its loaded models, which makes tritonserver poll
    every model folder of the repository on S3. Returns an undo."""
    from mlflow_triton.repository.layout import staging_name
    from mlflow_triton.rollout.switch import Rollout

    original = Rollout.staging_left_over

    def left_over(self) -> bool:
        staging = staging_name(self.name)
        folders, files = self.store.list_dir(f"{staging}/")
        indexes = [i for i in self.cluster.repository_index().values() if not isinstance(i, Exception)]
        return bool(folders or files) or any(e.get("name") == staging for index in indexes for e in index)

    Rollout.staging_left_over = left_over
    return lambda: setattr(Rollout, "staging_left_over", original)


def describe(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(
        f"{family} {sum(ops.values())} (" + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())) + ")"
        for family, ops in sorted(counts.items())
    ) or "none"


def describe_log(log: list[tuple[float, float, str, str]] | None, prefix: str) -> str:
    """One line per call: ``+0.123 s  +0.145 s  GetObject  repo/latency-bench/config.pbtxt``."""
    return "\n".join(f"  {t:6.3f}-{e:6.3f} s  {op:18} {key.removeprefix(prefix)}" for t, e, op, key in log or [])


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--models", type=int, default=1000)
    arguments.add_argument("--publish", type=int, default=8, help="models published for real (the rest cloned)")
    arguments.add_argument("--delays", default="0,20", help="milliseconds per S3 request, compared side by side")
    arguments.add_argument("--repeats", type=int, default=3)
    arguments.add_argument("--no-large-repository", action="store_true", help="skip step 3 (minutes at 20 ms)")
    arguments.add_argument("--prefetch-workers", default="8,32",
                           help="one-shot syncs at the highest delay with these many reads at once, side by side")
    args = arguments.parse_args()
    delays = sorted(float(d) for d in args.delays.split(","))
    quiet_logs()
    machine = machine_info()
    from mlflow.deployments import get_deploy_client

    from mlflow_triton.promotion import load_spec, sync
    from mlflow_triton.repository.s3_store import S3Store

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-s3-latency-"))
    stack = ProxiedStack(workdir / "stack", replicas=1, delay_ms=0).start()
    stubs = [StubTriton(), StubTriton()]
    measure = Measure(stack, RegistryCalls(), S3CallLog())
    figures: dict[str, Any] = {}
    try:
        with stack.exported_env():
            started = time.perf_counter()
            names = register_models(args.models, workdir)
            uri = f"models:/{names[0]}/1"
            base = {"model_repository": stack.model_repository, "instance_kind": "cpu"}
            changed = {**base, "max_batch_size": 16}
            client = get_deploy_client(f"triton:/{stack.triton_urls[0]}")
            client.create_deployment(DEPLOYMENT, uri, config=base)
            client.update_deployment(DEPLOYMENT, uri, config=changed)  # v2 serves; v1 the rollback target
            one = load_spec(triton=stack.triton_urls[0], config=base, require_models=False)
            spec = load_spec(
                models=names, alias=ALIAS, repository=stack.model_repository,
                triton=",".join(s.url for s in stubs), config={"instance_kind": "cpu"}, smoke_test=False,
            )  # fmt: skip
            published = dataclasses.replace(spec, models=spec.models[: args.publish])
            assert all(m.action == "published" for m in sync(published).models)
            print(f"setup: {args.models} registered, {args.publish} published ({time.perf_counter() - started:.0f} s)", flush=True)

            figures["small"] = update_and_rollback(measure, client, one, uri, changed, args.repeats, delays)
            figures["small_before"] = _as_before(measure, client, one, uri, changed, delays[-1:])
            print("small repository measured", flush=True)

            store = S3Store(stack.model_repository, endpoint_url=stack.s3_endpoint)
            cloned = clone_deployments(store, names[0], names[args.publish :])
            for stub in stubs:
                stub.loaded.update(names)  # what the replicas would answer with every model loaded
            print(f"cloned {cloned} objects ({time.perf_counter() - started:.0f} s)", flush=True)
            figures.update(sync_and_watch(measure, spec, args.repeats, delays))
            figures["sync_by_prefetch_workers"] = sync_by_prefetch_workers(
                measure, spec, args.repeats, delays[-1], [int(w) for w in args.prefetch_workers.split(",")]
            )  # fmt: skip
            print("sync and watch measured", flush=True)
            if not args.no_large_repository:
                figures["large"] = update_and_rollback(measure, client, one, uri, changed, 1, delays[-1:])
                figures["large_before"] = _as_before(measure, client, one, uri, changed, delays[-1:])
    finally:
        for stub in stubs:
            stub.close()
        stack.stop()
    report(args, delays, machine, figures, stack.prefix + "/")


def _as_before(measure: Measure, client: Any, spec: Any, uri: str, config: dict, delays: list[float]) -> dict:
    undo = staging_check_by_repository_index()
    try:
        return update_and_rollback(measure, client, spec, uri, config, 1, delays)
    finally:
        undo()


def _seconds(entry: dict[str, Any] | None) -> str:
    return f"{entry['seconds']:.2f} s" if entry else "-"


def report(args: Any, delays: list[float], machine: dict[str, Any], figures: dict[str, Any], prefix: str) -> None:
    n, low, high = args.models, str(delays[0]), str(delays[-1])
    deployments = n + args.publish + 1

    def row(label: str, entry: dict[str, Any], target: str) -> list[str]:
        cost = f"{entry[high]['seconds'] - entry[low]['seconds']:+.2f} s" if low in entry and low != high else "-"
        return [label, _seconds(entry.get(low)) if low != high else "-", _seconds(entry.get(high)), cost,
                str(entry[high]["serial_round_trips"]), target, describe(entry[high]["s3"])]  # fmt: skip

    rows = [
        row(f"one-shot sync, {n} models (fresh cache)", figures["sync"], "<= 10 s"),
        row(f"watch round, {n} models (cache kept)", figures["watch"], "<= 5 s"),
        row("no-op update, small repository", figures["small"]["update"], "<= 1 s"),
        row("rollback, small repository", figures["small"]["rollback"], "(report)"),
        row("  before: staging check by repository index, no-op update", figures["small_before"]["update"], "(report)"),
        row("  before: ..., rollback", figures["small_before"]["rollback"], "(report)"),
    ]  # fmt: skip
    if "large" in figures:
        rows += [
            row(f"no-op update, {deployments} deployments", figures["large"]["update"], "<= 1 s"),
            row(f"rollback, {deployments} deployments", figures["large"]["rollback"], "(report)"),
            row("  before: staging check by repository index, no-op update", figures["large_before"]["update"], "(report)"),
            row("  before: ..., rollback", figures["large_before"]["rollback"], "(report)"),
        ]  # fmt: skip
    print(f"\nS3 through the proxy at {low} and {high} ms per request, side by side; machine: "
          f"{machine['nproc']} x {machine['cpu']}, load at start {machine['load_average']}")  # fmt: skip
    print(table(rows, ["operation", f"at {low} ms", f"at {high} ms", "difference", "boto3 in series", "target",
                       f"S3 requests at {high} ms (client: operation count)"]))  # fmt: skip
    print("boto3 in series: the longest chain of this process's S3 requests each sent after the previous "
          "one's answer (its latency cost is about that many times the delay); tritonserver's requests "
          "run in series inside the Triton calls the operation waits for.")
    for count, entry in figures.get("sync_by_prefetch_workers", {}).items():
        print(f"one-shot sync at {high} ms, {count} state reads at once: {entry['seconds']:.2f} s "
              f"(runs {entry['runs']}), {entry['serial_round_trips']} boto3 requests in series")
    for delay in (low, high):
        print(f"at {delay} ms: sync runs {figures['sync'][delay]['runs']}; watch rounds {figures['watch'][delay]['runs']}")
    cold = figures["watch_cold_first_round"]
    print(f"first watch round (cold cache, {cold['delay']} ms): {cold['seconds']:.2f} s")
    print(f"registry calls: sync {figures['sync'][high]['registry']}; no-op update "
          f"{figures['small']['update'][high]['registry']}; rollback {figures['small']['rollback'][high]['registry']}")
    for op in ("update", "rollback"):
        print(f"\nboto3 requests of one {op} (small repository, {high} ms), in order:")
        print(describe_log(figures["small"][op][high]["log"], prefix))
    write_json(args.json, {
        "benchmark": "s3_latency", "machine": machine, "delays_ms": delays, "models": n,
        "published_for_real": args.publish, "replicas_sync": "2 stub HTTP servers", "replicas_update": 1,
        **{k: _jsonable(v) for k, v in figures.items()},
    })  # fmt: skip


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "result"}
    return value


if __name__ == "__main__":
    main()
