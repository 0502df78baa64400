"""Self-healing: time from a restarted (empty) replica being live to the model READY on it.

Setup (not timed): the embedded stack (moto S3, MLflow server) and three CPU tritonservers on
127.0.0.2-4 behind one name (``tests/test_fleet.py``'s ``Fleet``, resolved by the injected
resolver); one ONNX Scorer registered and promoted by ``sync``.

Measured, ``--repeats`` times (median and max):

* **watch**: SIGKILL replica 3, start it again empty (explicit mode), then one ``watch`` round
  (verification under the staging name on that replica, then the load): seconds from live to
  READY, and the round alone.
* **--load-model=\\***: the same restart with ``--load-model=*``: seconds from launch to live,
  and whether the pinned version is READY as soon as the replica is live (no ``watch``).

Run::

    .venv/bin/python benchmarks/fleet.py               # ~1-2 minutes
    .venv/bin/python benchmarks/fleet.py --repeats 5 --json fleet.json
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import machine_info, median, parser, quiet_logs, table, write_json


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=3)
    args = arguments.parse_args()
    quiet_logs()

    from mlflow import MlflowClient
    from test_fleet import FLEET_NAME, HOSTS, Fleet
    from test_promotion_support import ALIAS, register

    from mlflow_triton.fleet.discovery import dns_resolver, set_resolver
    from mlflow_triton.fleet.server import TritonServer
    from mlflow_triton.local.stack import LocalStack
    from mlflow_triton.promotion import sync, watch

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    info = machine_info()
    stack = LocalStack(workdir / "stack", replicas=0).start()
    fleet = None
    previous = set_resolver(lambda host, port: list(HOSTS) if host == FLEET_NAME else dns_resolver(host, port))
    try:
        with stack.exported_env():
            fleet = Fleet(stack, workdir / "fleet")
            stack.s3_client().put_object(Bucket=stack.bucket, Key=f"{fleet.prefix}/", Body=b"")
            for process in fleet.replicas:
                process.launch()
            for process in fleet.replicas:
                process.wait_healthy(180.0)
            name = "bench-fleet"
            register(name, 21)
            MlflowClient().set_registered_model_alias(name, ALIAS, "1")
            spec = fleet.spec(name)
            assert sync(spec).ok
            restarted = fleet.urls[2]

            def ready() -> bool:
                with TritonServer(restarted) as server:
                    return server.is_model_ready(name, 1)

            healed, rounds, launches, pinned = [], [], [], []
            for _ in range(args.repeats):
                fleet.kill(2)
                live_at = fleet.start(2)
                assert not ready()
                started = time.monotonic()
                report = watch(spec, interval_s=1.0, max_rounds=1)
                assert report is not None and report.ok and report.models[0].reloaded == [restarted]
                assert ready()
                healed.append(time.monotonic() - live_at)
                rounds.append(time.monotonic() - started)
            for _ in range(args.repeats):
                fleet.kill(2)
                launched = time.monotonic()
                fleet.start(2, "--load-model=*")
                launches.append(time.monotonic() - launched)
                pinned.append(ready())
    finally:
        set_resolver(previous)
        if fleet is not None:
            for process in fleet.replicas:
                process.stop()
        stack.stop()

    figures = {
        "machine": info,
        "replicas": len(HOSTS),
        "repeats": args.repeats,
        "watch_live_to_ready_s": {"median": round(median(healed), 2), "max": round(max(healed), 2)},
        "watch_round_s": {"median": round(median(rounds), 2), "max": round(max(rounds), 2)},
        "load_model_star_launch_to_live_s": {"median": round(median(launches), 2), "max": round(max(launches), 2)},
        "load_model_star_ready_when_live": all(pinned),
    }
    print(f"machine: {info}")
    print(table([
        ["watch: replica live -> READY", f"{median(healed):.2f} s", f"{max(healed):.2f} s"],
        ["  of which the watch round", f"{median(rounds):.2f} s", f"{max(rounds):.2f} s"],
        ["--load-model=*: launch -> live (READY)", f"{median(launches):.2f} s", f"{max(launches):.2f} s"],
    ], ["measure", "median", "max"]))  # fmt: skip
    print(f"--load-model=*: pinned version READY as soon as live in {sum(pinned)}/{len(pinned)} restarts")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
