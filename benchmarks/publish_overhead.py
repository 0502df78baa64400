"""The plugin's own cost of a publish, and its memory, at 100 MiB and 1 GiB.

Triton's loads are paid by any tool, so they are taken out: the plugin's overhead is
``(publish - time inside Triton's load calls) / raw transfer of the same bytes``, measured side
by side in one run on the embedded stack (moto S3, MLflow server, one tritonserver):

* download path (``--modes local``: MLflow proxies its artifacts over HTTP): the raw transfer
  is ``mlflow.artifacts.download_artifacts`` then a default ``boto3`` ``upload_file``, one after
  the other, as a script would do it. The plugin streams the artifact into the multipart upload.
* copy path (``--modes s3``: MLflow's artifacts are on the repository's S3): the raw transfer is
  the fastest boto3 server-side copy of the object (one ``CopyObject`` or the transfer
  manager's parallel ``UploadPartCopy``, whichever is faster here).

Each publish runs in a child process (``create_deployment`` with verification, as users run
it); this process samples the child's RSS every 10 ms with ``psutil`` (peak of the publishing
process, and of its process tree), and the child reports the seconds spent inside Triton's
load calls (staged load + switch) and the bytes it moved. A second child republishes the same
registered version (a no-op) and reports what it read. Then a rollback to the first version
(the 1 GiB smoke test runs there too) in a child, measured the same way.

The old end-to-end ratio (plugin / (raw transfer + one Triton load)) is printed as well.

Run::

    .venv/bin/python benchmarks/publish_overhead.py                  # 100 MiB and 1 GiB, ~10 min
    .venv/bin/python benchmarks/publish_overhead.py --sizes 100 --modes local
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

CHILD = r"""
import json, sys, time
sys.path[:0] = [%(root)r, %(benchmarks)r]
from _common import S3Traffic, quiet_logs
quiet_logs()
from mlflow.deployments import get_deploy_client
from mlflow_triton.repository import artifacts as artifact_stream
from mlflow_triton.fleet.server import TritonCluster
from mlflow_triton.promotion import load_spec, rollback

args = json.loads(sys.argv[1])
loads, streamed = [], [0]
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
    return data
artifact_stream.HashingReader.read = counted_read
import mlflow.artifacts, os as _os
downloaded = [0]
download_artifacts = mlflow.artifacts.download_artifacts
def counted_download(*a, **k):
    path = download_artifacts(*a, **k)
    files = [path] if _os.path.isfile(path) else [_os.path.join(r, f) for r, _, fs in _os.walk(path) for f in fs]
    downloaded[0] += sum(_os.path.getsize(f) for f in files)
    return path
mlflow.artifacts.download_artifacts = counted_download
from mlflow_triton.rollout import publisher as _publisher
from mlflow_triton.rollout import switch as _rollout
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
timed(_publisher, "transfer", "transfer (copy / stream / upload)")
timed(S3Store, "copy_prefix", "staging copy in the repository")
timed(S3Store, "download_file", "verification: fetch the version")
timed(_rollout.Rollout, "verify", "staged load + verification")
timed(_verification, "run_reference", "verification: local reference run")
traffic = S3Traffic()
client = get_deploy_client(args["target"])
print("IMPORTED", flush=True)
sys.stdin.readline()  # the parent notes the RSS after imports
started = time.perf_counter()
if args["action"] == "rollback":
    spec = load_spec(triton=args["target"][len("triton:/"):], config=args["config"], require_models=False)
    report = rollback(spec, args["name"])
    result = {"version": getattr(report, "version", None)}
else:
    result = client.update_deployment(args["name"], args["model_uri"], config=args["config"]) \
        if args["action"] == "update" else client.create_deployment(args["name"], args["model_uri"], config=args["config"])
seconds = time.perf_counter() - started
print("RESULT " + json.dumps({
    "seconds": seconds, "load_seconds": sum(loads), "loads": len(loads), "streamed_bytes": streamed[0], "downloaded_bytes": downloaded[0],
    "changed": result.get("changed"), "version": result.get("version"),
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


def log_model(rows: int, registered: str) -> list[str]:
    """Two registered versions of the model (different weights: a real change, then a rollback)."""
    import mlflow
    import mlflow.onnx
    import numpy as np
    from mlflow.models import infer_signature

    x = np.zeros((1, rows), dtype=np.float32)
    signature = infer_signature({"x": x}, {"y": x})
    uris = []
    for seed in range(2):
        model = onnx_model(rows, seed)
        with mlflow.start_run():
            info = mlflow.onnx.log_model(
                model, name="model", signature=signature, registered_model_name=registered,
                save_as_external_data=False, pip_requirements=["onnx"], input_example={"x": x},
            )  # fmt: skip
        del model
        uris.append(f"models:/{registered}/{info.registered_model_version}")
    return uris


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


def run(mode: str, size_mib: int, workdir: Path) -> dict[str, Any]:
    from mlflow_triton.flavors.registry import resolve_model
    from mlflow_triton.local.stack import LocalStack

    rows = int((size_mib * MB / 4) ** 0.5)
    stack = LocalStack(workdir / f"{mode}-{size_mib}", replicas=1, mlflow_artifacts=mode).start()
    try:
        with stack.exported_env():
            env = dict(os.environ)
            registered = f"overhead-{mode}-{size_mib}"
            first, second = log_model(rows, registered)
            source = resolve_model(second)
            target = f"triton:/{stack.triton_urls[0]}"
            name = f"overhead-{size_mib}"
            common = {"target": target, "name": name, "config": CPU}
            created = run_child(env, {**common, "action": "create", "model_uri": first})
            raw = raw_transfer(mode, stack, source, workdir)
            publish = run_child(env, {**common, "action": "update", "model_uri": second})
            noop = run_child(env, {**common, "action": "update", "model_uri": second})
            back = run_child(env, {**common, "action": "rollback"})
    finally:
        stack.stop()
    model_bytes = source_size = publish.get("bytes_uploaded") or (rows * rows * 4)
    own = publish["seconds"] - publish["load_seconds"]
    one_load = publish["load_seconds"] / max(publish["loads"], 1)
    return {
        "mode": mode,
        "size_mib": size_mib,
        "model_bytes": source_size,
        "raw_transfer": raw,
        "publish": publish,
        "first_publish": created,
        "noop": noop,
        "rollback": back,
        "overhead_ratio": own / raw["seconds"],
        "old_ratio": publish["seconds"] / (raw["seconds"] + one_load),
        "model_bytes_estimate": model_bytes,
    }


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--modes", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    arguments.add_argument("--sizes", nargs="+", type=int, default=[100, 1024], help="MiB")
    args = arguments.parse_args()
    quiet_logs()
    machine = machine_info()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    results = [run(mode, size, workdir) for size in args.sizes for mode in args.modes]
    mib = lambda b: f"{b / MB:.0f} MiB"  # noqa: E731
    print(f"\nPlugin overhead and memory (machine: {machine['nproc']} x {machine['cpu']}, load {machine['load_average']})")
    print(table(
        [[f"{r['size_mib']} MiB", r["mode"], f"{r['publish']['seconds']:.2f} s",
          f"{r['publish']['load_seconds']:.2f} s ({r['publish']['loads']})",
          f"{r['raw_transfer']['seconds']:.2f} s", f"{r['overhead_ratio']:.2f}", f"{r['old_ratio']:.2f}",
          mib(r["publish"]["rss_peak"]), mib(r["publish"]["rss_peak_tree"]), mib(r["rollback"]["rss_peak"]),
          f"{r['noop']['received'] + r['noop']['streamed_bytes'] + r['noop']['downloaded_bytes']} B"] for r in results],
        ["size", "path", "publish", "in Triton loads", "raw transfer", "overhead ratio (<= 1.15)",
         "old ratio", "peak RSS publish", "(with children)", "peak RSS rollback", "no-op bytes read"],
    ))  # fmt: skip
    for r in results:
        print(f"  {r['size_mib']} MiB {r['mode']}: raw {json.dumps({k: round(v, 3) for k, v in r['raw_transfer'].items()})}; "
              f"publish streamed {human_bytes(r['publish']['streamed_bytes'])}, S3 sent {human_bytes(r['publish']['sent'])}, "
              f"received {human_bytes(r['publish']['received'])}, copy calls {r['publish']['copy_calls']}; "
              f"RSS after imports {mib(r['publish']['rss_after_imports'])}; rollback {r['rollback']['seconds']:.2f} s")  # fmt: skip
        print(f"    publish phases: {json.dumps({k: round(v, 2) for k, v in r['publish']['phases'].items()})}")
    write_json(args.json, {"benchmark": "publish_overhead", "machine": machine, "results": results})


if __name__ == "__main__":
    main()
