"""A verified publish against its floor, and its memory, at 100 MiB and 1 GiB.

The floor of a verified rollout is what any tool pays: the raw transfer of the same bytes and
Triton's two loads (the staging load that is verified, and the switch). The figure is
``floor ratio = publish / (raw transfer + time inside Triton's load calls during the publish)``
(issue #19: <= 1.15), measured side by side in one run on the embedded stack (moto S3, MLflow
server, one tritonserver):

* download path (``--modes local``: MLflow proxies its artifacts over HTTP): the raw transfer
  is ``mlflow.artifacts.download_artifacts`` then a default ``boto3`` ``upload_file``, one after
  the other, as a script would do it. The plugin streams the artifact into the multipart upload.
* copy path (``--modes s3``: MLflow's artifacts are on the repository's S3): the raw transfer is
  the fastest boto3 server-side copy of the object (one ``CopyObject`` or the transfer
  manager's parallel ``UploadPartCopy``, whichever is faster here).

Each publish runs in a child process (``create_deployment`` with verification, as users run
it); this process samples the child's RSS every 10 ms with ``psutil`` (peak of the publishing
process, and of its process tree), and the child reports the seconds spent inside Triton's
load calls (staged load + switch), its phases (timers patched where the package looks the
functions up) and the bytes it moved. A second child republishes the same registered version
(a no-op) and reports what it read. Then a rollback to the first version in a child, and a
replica heal: the model is unloaded from tritonserver by hand (as a restart in explicit mode
loses it) and a child runs ``ModelPublisher.repair``, what ``mlflow-triton sync`` runs for a
replica that lost the serving version (verified under the staging name, then loaded). For
both, the child counts the bytes of the model file it read: streamed through
``HashingReader``, downloaded with ``mlflow.artifacts.download_artifacts``, and S3
``GetObject`` bodies of ``*.onnx`` keys (issue #19: 0 bytes).

Printed as well: the floor ratio with the loads of the rollback in the same run instead (the
same bytes loaded twice with nothing running beside the loads: on 2 cores, moto's copy of the
version folder and the reference run's child, which overlap the publish's staging load, take
CPU from tritonserver and lengthen the publish's own loads; on S3 the copy costs no CPU here);
the plugin's own overhead ``(publish - Triton loads) / raw transfer``; and the old end-to-end
ratio ``publish / (raw transfer + one Triton load)``.

Run::

    .venv/bin/python benchmarks/publish_overhead.py                  # 100 MiB and 1 GiB, ~10 min
    .venv/bin/python benchmarks/publish_overhead.py --sizes 100 --modes local
    .venv/bin/python benchmarks/publish_overhead.py --sizes 100 --delay-ms 20   # S3 at AWS's latency
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import MB, ROOT, human_bytes, machine_info, parser, quiet_logs, table, write_json

CPU = {"instance_kind": "cpu"}
#: What names the model file (and only it) in S3 keys and downloaded paths.
MODEL_SUFFIX = ".onnx"

CHILD = r"""
import json, os, sys, time
sys.path[:0] = [%(root)r, %(benchmarks)r]
from _common import S3Traffic, quiet_logs
quiet_logs()
from mlflow.deployments import get_deploy_client
from mlflow_triton.repository import artifacts as artifact_stream
from mlflow_triton.fleet.server import TritonCluster
from mlflow_triton.promotion import load_spec, rollback

args = json.loads(sys.argv[1])
MODEL_SUFFIX = args["model_suffix"]
loads, streamed, downloaded, model_read = [], [0], [0], {"streamed": 0, "downloaded": 0, "s3_get": 0}
load_model = TritonCluster.load_model
def timed_load(self, *a, **k):
    started = time.perf_counter()
    try:
        return load_model(self, *a, **k)
    finally:
        loads.append(time.perf_counter() - started)
TritonCluster.load_model = timed_load
read = artifact_stream.HashingReader.read
def counted_read(self, amount=-1):
    data = read(self, amount)
    streamed[0] += len(data)
    model_read["streamed"] += len(data)  # only the model file and its companions are streamed
    return data
artifact_stream.HashingReader.read = counted_read
import mlflow.artifacts
download_artifacts = mlflow.artifacts.download_artifacts
def counted_download(*a, **k):
    path = download_artifacts(*a, **k)
    files = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    downloaded[0] += sum(os.path.getsize(f) for f in files)
    model_read["downloaded"] += sum(os.path.getsize(f) for f in files if f.endswith(MODEL_SUFFIX))
    return path
mlflow.artifacts.download_artifacts = counted_download
traffic = S3Traffic()  # sets up boto3's default session, which every client here uses
import boto3
def _note_key(params, context, **_):
    context["bench_key"] = params.get("Key", "")
def _got_object(parsed, context, **_):
    if str(context.get("bench_key", "")).endswith(MODEL_SUFFIX):
        model_read["s3_get"] += int(parsed.get("ContentLength", 0) or 0)
boto3.DEFAULT_SESSION.events.register("provide-client-params.s3.GetObject", _note_key)
boto3.DEFAULT_SESSION.events.register("after-call.s3.GetObject", _got_object)
from mlflow_triton.rollout import switch as _switch
from mlflow_triton.rollout import transaction as _transaction
from mlflow_triton.rollout import verification as _verification
from mlflow_triton.repository.s3_store import S3Store
phases = {}
def timed(owner, attribute, label):
    original = getattr(owner, attribute)
    def wrapper(*a, **k):
        started = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            phases[label] = phases.get(label, 0.0) + time.perf_counter() - started
    setattr(owner, attribute, wrapper)
# Patched where they are looked up: the transaction imports locate/transfer by name, the smoke
# test calls run_reference by its name in rollout.verification (in a background thread).
timed(_transaction, "locate", "locate (+ inspect on the copy path)")
timed(_transaction, "transfer", "transfer (copy / stream / upload)")
timed(S3Store, "copy_prefix", "copies in the repository (a publish: building NAME/<v>/ beside the staging load)")
timed(_transaction.PublishTransaction, "_build_version_folder", "building the version folder (background)")
timed(S3Store, "download_file", "fetch from the repository (model or stored reference)")
timed(_switch.Rollout, "verify", "staging: copy + load + verification")
timed(_switch.Rollout, "switch", "switch (config + load)")
timed(_verification.SmokeTest, "_expected_outputs", "verification: waiting for the reference")
timed(_verification, "run_reference", "local reference run (overlaps the staging)")
timed(_transaction.PublishTransaction, "_keep_reference", "storing the reference outputs")
from mlflow_triton.repository.lease import Lease
from mlflow_triton.rollout import audit as _audit, repair as _repair
from mlflow_triton.rollout.publisher import ModelPublisher as _Publisher
timed(_Publisher, "publish", "ModelPublisher.publish (all but resolving the model)")
timed(Lease, "acquire", "lease: acquire")
timed(Lease, "release", "lease: release")
timed(_repair, "remove_leftovers", "repair: leftovers")
timed(_repair, "prune", "prune")
timed(_transaction, "derive_smoke_inputs", "smoke inputs")
timed(_switch.Rollout, "clean_staging", "staging: unload + delete")
timed(_switch.Rollout, "record_serving", "record serving (history + audit tags)")
timed(_audit.AuditTrail, "serving", "audit tags (MLflow)")
client = get_deploy_client(args["target"])
print("IMPORTED", flush=True)
sys.stdin.readline()  # the parent notes the RSS after imports
traffic.reset()
started = time.perf_counter()
if args["action"] in ("rollback", "heal"):
    spec = load_spec(triton=args["target"][len("triton:/"):], config=args["config"], require_models=False)
if args["action"] == "rollback":
    report = rollback(spec, args["name"])
    result = {"version": getattr(report, "version", None)}
elif args["action"] == "heal":  # what `mlflow-triton sync` runs for a replica that lost the model
    from mlflow_triton.fleet.discovery import resolve_urls
    from mlflow_triton.rollout.publisher import ModelPublisher
    publisher = ModelPublisher.for_config(spec.config_for(args["name"]), resolve_urls(spec.triton_urls), target=spec.target_uri)
    version = publisher.read_state(args["name"]).serving_version
    repaired = publisher.repair(args["name"], version, verify=True)
    result = {"version": version, "reloaded": repaired.reloaded}
else:
    result = client.update_deployment(args["name"], args["model_uri"], config=args["config"]) \
        if args["action"] == "update" else client.create_deployment(args["name"], args["model_uri"], config=args["config"])
seconds = time.perf_counter() - started
print("RESULT " + json.dumps({
    "seconds": seconds, "load_seconds": sum(loads), "loads": len(loads), "streamed_bytes": streamed[0], "downloaded_bytes": downloaded[0],
    "model_bytes_read": sum(model_read.values()), "model_read": model_read,
    "changed": result.get("changed"), "version": result.get("version"), "reloaded": result.get("reloaded"),
    "bytes_uploaded": result.get("bytes_uploaded"), "phases": phases, **traffic.snapshot(),
}), flush=True)
"""


def onnx_model(rows: int, seed: int):
    """``y = x @ W`` with a ``rows x rows`` float32 initializer, batch axis dynamic."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).standard_normal((rows, rows), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], f"matmul{rows}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, rows])],
        [numpy_helper.from_array(weights, "W")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def log_model(rows: int, registered: str, golden: bool = False) -> list[str]:
    """Two registered versions of the model (different weights: a real change, then a rollback).

    With ``golden``, each carries golden outputs in the MLflow model directory, as the export
    callback logs them (``mlflow_triton.core.golden``): verification then needs no local run."""
    import mlflow
    import mlflow.onnx
    import numpy as np
    from mlflow.models import infer_signature

    x = np.zeros((1, rows), dtype=np.float32)
    signature = infer_signature({"x": x}, {"y": x})
    uris = []
    for seed in range(2):
        model = onnx_model(rows, seed)
        with mlflow.start_run() as run:
            if golden:
                log_with_golden(model, rows, seed, signature, x)
                info = mlflow.register_model(f"runs:/{run.info.run_id}/model", registered)
                version = info.version
            else:
                info = mlflow.onnx.log_model(
                    model, name="model", signature=signature, registered_model_name=registered,
                    save_as_external_data=False, pip_requirements=["onnx"], input_example={"x": x},
                )  # fmt: skip
                version = info.registered_model_version
        del model
        uris.append(f"models:/{registered}/{version}")
    return uris


def log_with_golden(model, rows: int, seed: int, signature, example) -> None:
    """The model saved with an input example and one golden case (``y = x @ W`` in numpy)."""
    import mlflow
    import mlflow.onnx
    import numpy as np
    from onnx import numpy_helper

    from mlflow_triton.core.golden import GOLDEN_DIR, GoldenCases

    weights = numpy_helper.to_array(model.graph.initializer[0])
    x = np.random.default_rng(100 + seed).standard_normal((2, rows), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="bench-golden-") as tmp:
        path = Path(tmp) / "model"
        mlflow.onnx.save_model(model, str(path), signature=signature, input_example={"x": example},
                               save_as_external_data=False, pip_requirements=["onnx"])  # fmt: skip
        GoldenCases([{"x": x}], [{"y": x @ weights}], rtol=1e-3, atol=1e-3).save(path / GOLDEN_DIR)
        del weights
        mlflow.log_artifacts(str(path), "model")


def run_child(stack_env: dict[str, str], args: dict[str, Any]) -> dict[str, Any]:
    """Run one publish in a child, sampling its RSS from here (process and process tree)."""
    import psutil

    code = CHILD % {"root": str(ROOT), "benchmarks": str(ROOT / "benchmarks")}
    child = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env={**os.environ, **stack_env},
    )  # fmt: skip
    process = psutil.Process(child.pid)
    assert child.stdout.readline().strip() == "IMPORTED"
    baseline = process.memory_info().rss
    child.stdin.write("go\n")
    child.stdin.flush()
    peak = peak_tree = baseline
    lines: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
    reader.start()
    while child.poll() is None:
        try:
            rss = process.memory_info().rss
            tree = rss + sum(c.memory_info().rss for c in process.children(recursive=True))
        except psutil.Error:
            break
        peak, peak_tree = max(peak, rss), max(peak_tree, tree)
        time.sleep(0.01)
    reader.join(10)
    result = next((json.loads(l[7:]) for l in lines if l.startswith("RESULT ")), None)
    if result is None:
        raise RuntimeError(f"the child failed (exit {child.returncode}): {''.join(lines)[-2000:]}")
    return {**result, "rss_after_imports": baseline, "rss_peak": peak, "rss_peak_tree": peak_tree}


def raw_transfer(mode: str, stack, source, workdir: Path) -> dict[str, float]:
    """What a script does at least: download + upload (local), or the fastest server-side copy."""
    from urllib.parse import urlparse

    import boto3
    import mlflow

    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint)  # default TransferConfig
    key = f"{stack.prefix}/raw-probe/1/model.onnx"
    if mode == "local":
        started = time.perf_counter()
        local = mlflow.artifacts.download_artifacts(artifact_uri=source.artifact_uri, dst_path=str(workdir / "raw"))
        downloaded = time.perf_counter()
        s3.upload_file(local, stack.bucket, key)
        done = time.perf_counter()
        Path(local).unlink()
        s3.delete_object(Bucket=stack.bucket, Key=key)
        return {"seconds": done - started, "download": downloaded - started, "upload": done - downloaded}
    parsed = urlparse(source.artifact_uri)
    copy_source = {"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/")}
    started = time.perf_counter()
    s3.copy_object(CopySource=copy_source, Bucket=stack.bucket, Key=key)
    single = time.perf_counter() - started
    started = time.perf_counter()
    s3.copy(copy_source, stack.bucket, key + ".multipart")
    multipart = time.perf_counter() - started
    s3.delete_objects(Bucket=stack.bucket, Delete={"Objects": [{"Key": key}, {"Key": key + ".multipart"}]})
    return {"seconds": min(single, multipart), "copy_object": single, "upload_part_copy": multipart}


def unload_everywhere(stack, name: str) -> None:
    """A replica loses the model (a restart in explicit model-control mode): unloaded by hand."""
    import tritonclient.http as httpclient

    for url in stack.triton_urls:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        client.unload_model(name)
        deadline = time.monotonic() + 60
        while client.is_model_ready(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        client.close()


def run(mode: str, size_mib: int, workdir: Path, golden: bool = False, delay_ms: float = 0.0) -> dict[str, Any]:
    """One size and path. With ``delay_ms``, every S3 request of the stack (this process, the
    children, MLflow's server, tritonserver) goes through :mod:`s3_proxy`, delayed from the raw
    transfer on (the setup runs at loopback speed), and each step's S3 requests are counted."""
    from mlflow_triton.flavors.registry import resolve_model
    from mlflow_triton.local.stack import LocalStack

    rows = int((size_mib * MB / 4) ** 0.5)
    folder = workdir / f"{mode}-{size_mib}{'-golden' if golden else ''}{f'-{delay_ms:g}ms' if delay_ms else ''}"
    stack_class = LocalStack
    if delay_ms:
        import s3_proxy

        stack_class = s3_proxy.ProxiedStack
    stack = stack_class(folder, replicas=1, mlflow_artifacts=mode)
    if delay_ms:
        stack.delay_ms = 0.0
    stack.start()
    requests: dict[str, Any] = {}

    def step(label: str, work):
        if delay_ms:
            stack.proxy.set_delay(delay_ms)
            stack.proxy.take()
        try:
            return work()
        finally:
            if delay_ms:
                requests[label] = stack.proxy.take()
                stack.proxy.set_delay(0)

    try:
        with stack.exported_env():
            env = dict(os.environ)
            registered = f"overhead-{mode}-{size_mib}"
            first, second = log_model(rows, registered, golden)
            source = resolve_model(second)
            target = f"triton:/{stack.triton_urls[0]}"
            name = f"overhead-{size_mib}"
            common = {"target": target, "name": name, "config": CPU, "model_suffix": MODEL_SUFFIX}
            created = run_child(env, {**common, "action": "create", "model_uri": first})
            raw = step("raw transfer", lambda: raw_transfer(mode, stack, source, workdir))
            publish = step("publish", lambda: run_child(env, {**common, "action": "update", "model_uri": second}))
            noop = step("no-op update", lambda: run_child(env, {**common, "action": "update", "model_uri": second}))
            back = step("rollback", lambda: run_child(env, {**common, "action": "rollback"}))
            unload_everywhere(stack, name)
            heal = step("heal", lambda: run_child(env, {**common, "action": "heal"}))
    finally:
        stack.stop()
    result = figures(mode, size_mib, rows, raw, publish, created, noop, back, heal)
    return {**result, "golden": golden, "delay_ms": delay_ms, "s3_requests": requests}


def figures(mode: str, size_mib: int, rows: int, raw: dict[str, float], publish: dict[str, Any],
            created: dict[str, Any], noop: dict[str, Any], back: dict[str, Any], heal: dict[str, Any]) -> dict[str, Any]:
    """The ratios of one size and path: the done-when's floor ratio first, the older ones after."""
    own = publish["seconds"] - publish["load_seconds"]
    one_load = publish["load_seconds"] / max(publish["loads"], 1)
    floor = raw["seconds"] + publish["load_seconds"]
    # The rollback loads the same number of bytes twice with nothing beside its loads (its copy
    # into the staging folder runs before them, its reference is stored): Triton's loads undisturbed.
    quiet_floor = raw["seconds"] + back["load_seconds"]
    return {
        "mode": mode,
        "size_mib": size_mib,
        "model_bytes": publish.get("bytes_uploaded") or (rows * rows * 4),
        "raw_transfer": raw,
        "publish": publish,
        "first_publish": created,
        "noop": noop,
        "rollback": back,
        "heal": heal,
        "floor_seconds": floor,
        "floor_ratio": publish["seconds"] / floor,
        "floor_ratio_undisturbed_loads": publish["seconds"] / quiet_floor,
        "overhead_ratio": own / raw["seconds"],
        "old_ratio": publish["seconds"] / (raw["seconds"] + one_load),
    }


def report(results: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    mib = lambda b: f"{b / MB:.0f} MiB"  # noqa: E731
    print(f"\nVerified publish against its floor (machine: {machine['nproc']} x {machine['cpu']}, load {machine['load_average']})")
    print(table(
        [[f"{r['size_mib']} MiB", r["mode"] + (" (golden)" if r.get("golden") else ""), f"{r['publish']['seconds']:.2f} s",
          f"{r['raw_transfer']['seconds']:.2f} s", f"{r['publish']['load_seconds']:.2f} s ({r['publish']['loads']})",
          f"{r['floor_ratio']:.2f}", f"{r['floor_ratio_undisturbed_loads']:.2f} ({r['rollback']['load_seconds']:.2f} s)",
          f"{r['overhead_ratio']:.2f}", f"{r['old_ratio']:.2f}",
          mib(r["publish"]["rss_peak"]), mib(r["publish"]["rss_peak_tree"]), mib(r["rollback"]["rss_peak"]),
          f"{r['rollback']['model_bytes_read']} B", f"{r['heal']['model_bytes_read']} B",
          f"{r['noop']['received'] + r['noop']['streamed_bytes'] + r['noop']['downloaded_bytes']} B"] for r in results],
        ["size", "path", "publish", "raw transfer", "in Triton loads", "floor ratio (<= 1.15)",
         "same, rollback's loads", "overhead ratio",
         "old ratio", "peak RSS publish", "(with children)", "peak RSS rollback", "rollback model bytes read",
         "heal model bytes read", "no-op bytes read"],
    ))  # fmt: skip
    for r in results:
        print(f"  {r['size_mib']} MiB {r['mode']}: raw {json.dumps({k: round(v, 3) for k, v in r['raw_transfer'].items()})}; "
              f"publish streamed {human_bytes(r['publish']['streamed_bytes'])}, S3 sent {human_bytes(r['publish']['sent'])}, "
              f"received {human_bytes(r['publish']['received'])}, copy calls {r['publish']['copy_calls']}; "
              f"RSS after imports {mib(r['publish']['rss_after_imports'])}; rollback {r['rollback']['seconds']:.2f} s "
              f"(peak {mib(r['rollback']['rss_peak'])}); heal {r['heal']['seconds']:.2f} s, reloaded {r['heal']['reloaded']} "
              f"(peak {mib(r['heal']['rss_peak'])})")  # fmt: skip
        print(f"    publish phases: {json.dumps({k: round(v, 2) for k, v in r['publish']['phases'].items()})}")
        for label, counts in r.get("s3_requests", {}).items():
            total = sum(sum(ops.values()) for ops in counts.values())
            print(f"    S3 requests at {r['delay_ms']:g} ms, {label}: {total} {json.dumps(counts)}")
        for step in ("rollback", "heal"):
            print(f"    {step}: model bytes read {json.dumps(r[step]['model_read'])}, "
                  f"phases {json.dumps({k: round(v, 2) for k, v in r[step]['phases'].items()})}")


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--modes", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    arguments.add_argument("--sizes", nargs="+", type=int, default=[100, 1024], help="MiB")
    arguments.add_argument("--golden", action="store_true", help="log the models with golden outputs (no local run)")
    arguments.add_argument("--delay-ms", type=float, default=0.0,
                           help="delay every S3 request by this much (benchmarks/s3_proxy.py; AWS: 10-30 ms)")
    args = arguments.parse_args()
    quiet_logs()
    machine = machine_info()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    results = []
    for size in args.sizes:
        for mode in args.modes:
            results.append(run(mode, size, workdir, args.golden, args.delay_ms))
            write_json(args.json, {"benchmark": "publish_overhead", "machine": machine, "results": results, "partial": True})
    report(results, machine)
    write_json(args.json, {"benchmark": "publish_overhead", "machine": machine, "results": results})


if __name__ == "__main__":
    main()
