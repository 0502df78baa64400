"""Publish a 100 MiB ONNX model: the plugin vs the physical floor, side by side in one run.

For each MLflow artifact setup of the embedded stack (one tritonserver):

* ``local``: MLflow proxies artifacts from a local directory, so the plugin downloads the
  model through the MLflow server, hashes it and uploads it (the download path).
* ``s3``: MLflow artifacts live on the same S3 endpoint as the Triton repository, so the
  plugin copies the file server-side (CopyObject / UploadPartCopy).

The floor is what any tool must do at least: a bare ``boto3`` ``upload_file`` of the same
bytes (default ``TransferConfig``), a ``config.pbtxt`` write and Triton's load of the
identical model. The plugin's time is ``create_deployment`` end to end (registry lookup,
checks, lease, transfer, staged load and smoke inference on every replica, config swap, load,
wait READY), and again with ``-C verify=false`` (the staged load stays, the inference and its
local reference run go). Repeats alternate the order.
Then the same registered version is published again: a no-op that must upload 0 bytes.

Run::

    .venv/bin/python benchmarks/publish.py            # ~3 minutes
    .venv/bin/python benchmarks/publish.py --modes s3 --repeats 1
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    DownloadTraffic,
    S3Traffic,
    human_bytes,
    machine_info,
    median,
    parser,
    quiet_logs,
    table,
    write_json,
)

ROWS = COLS = 5120  # one float32 initializer of 5120 x 5120 = 100 MiB
CPU = {"instance_kind": "cpu"}
REGISTERED = "bench-100mib"


def big_onnx_model():
    """``y = x @ W`` with a 100 MiB initializer, batch axis dynamic."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((ROWS, COLS), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "matmul100mib",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, ROWS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, COLS])],
        [numpy_helper.from_array(weights, "W")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def log_model() -> str:
    """Register the model in the stack's MLflow; returns ``models:/NAME/VERSION``."""
    import mlflow
    import mlflow.onnx
    import numpy as np
    from mlflow.models import infer_signature

    x = np.zeros((1, ROWS), dtype=np.float32)
    signature = infer_signature({"x": x}, {"y": np.zeros((1, COLS), dtype=np.float32)})
    with mlflow.start_run():
        # Weights embedded (save_as_external_data=False): the floor uploads the same single file.
        info = mlflow.onnx.log_model(
            big_onnx_model(), name="model", signature=signature, registered_model_name=REGISTERED,
            save_as_external_data=False, pip_requirements=["onnx"],
        )  # fmt: skip
    return f"models:/{REGISTERED}/{info.registered_model_version}"


def floor_publish(stack, s3, triton, model_file: Path, config_text: str, name: str) -> dict[str, float]:
    """boto3 upload_file (default TransferConfig) + config.pbtxt + Triton load until READY."""
    started = time.perf_counter()
    s3.upload_file(str(model_file), stack.bucket, f"{stack.prefix}/{name}/1/model.onnx")
    uploaded = time.perf_counter()
    s3.put_object(Bucket=stack.bucket, Key=f"{stack.prefix}/{name}/config.pbtxt", Body=config_text.encode())
    triton.load_model(name)
    triton.wait_until_ready(name, 1, timeout_s=300)
    done = time.perf_counter()
    triton.unload_model(name)
    s3.delete_object(Bucket=stack.bucket, Key=f"{stack.prefix}/{name}/1/model.onnx")
    s3.delete_object(Bucket=stack.bucket, Key=f"{stack.prefix}/{name}/config.pbtxt")
    return {"total": done - started, "upload": uploaded - started, "load": done - uploaded}


def time_copies(stack, s3, artifact_uri: str) -> dict[str, float]:
    """Seconds of the store's multipart copy (what the plugin does) and of one CopyObject."""
    from urllib.parse import urlparse

    from mlflow_triton.repository.s3_store import S3Store

    store = S3Store(stack.model_repository, client=s3)
    started = time.perf_counter()
    store.copy_from(artifact_uri, "copy-probe/multipart")
    multipart = time.perf_counter() - started
    source = urlparse(artifact_uri)
    started = time.perf_counter()
    s3.copy_object(Bucket=stack.bucket, Key=f"{stack.prefix}/copy-probe/single",
                   CopySource={"Bucket": source.netloc, "Key": source.path.lstrip("/")})  # fmt: skip
    single = time.perf_counter() - started
    store.delete_prefix("copy-probe/")
    return {"multipart": multipart, "single": single}


def run_mode(mode: str, repeats: int, workdir: Path, s3_traffic: S3Traffic, downloads: DownloadTraffic) -> dict[str, Any]:
    import boto3
    import mlflow
    from mlflow.deployments import get_deploy_client

    from mlflow_triton.flavors.onnx import io_from_onnx
    from mlflow_triton.flavors.registry import resolve_model
    from mlflow_triton.fleet.server import TritonServer
    from mlflow_triton.local.stack import LocalStack
    from mlflow_triton.repository.artifacts import download_artifact
    from mlflow_triton.settings.deployment import DeploymentConfig
    from mlflow_triton.triton_config.model_config import build_model_config, to_pbtxt

    stack = LocalStack(workdir / mode, replicas=1, mlflow_artifacts=mode).start()
    try:
        with stack.exported_env():
            model_uri = log_model()
            source = resolve_model(model_uri)
            model_file = download_artifact(source.artifact_uri, workdir / f"floor-{mode}")  # the very same bytes
            size = model_file.stat().st_size
            s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint)  # default TransferConfig
            triton = TritonServer(stack.triton_urls[0])
            client = get_deploy_client(f"triton:/{stack.triton_urls[0]}")
            floors, plugins, noops, copies, unverified = [], [], [], [], []
            for repeat in range(repeats):
                floor_name, plugin_name = f"floor-{repeat}", f"plugin-{repeat}"
                config_text = to_pbtxt(build_model_config(
                    floor_name, io_from_onnx(model_file), DeploymentConfig(**CPU), 1, "onnxruntime", "model.onnx"
                ))  # fmt: skip

                # Each step binds this repeat's names: it runs now, inside the loop.
                def run_floor(floor_name=floor_name, config_text=config_text, repeat=repeat):
                    floor = floor_publish(stack, s3, triton, model_file, config_text, floor_name)
                    if mode == "local":  # what the download path must fetch before uploading
                        started = time.perf_counter()
                        mlflow.artifacts.download_artifacts(
                            artifact_uri=source.artifact_uri, dst_path=str(workdir / f"fetch-{repeat}")
                        )
                        floor["download"] = time.perf_counter() - started
                        (workdir / f"fetch-{repeat}" / model_file.name).unlink()
                    floors.append(floor)

                def run_plugin(plugin_name=plugin_name):
                    s3_traffic.reset()
                    downloads.bytes = 0
                    started = time.perf_counter()
                    result = client.create_deployment(plugin_name, model_uri, config=CPU)
                    seconds = time.perf_counter() - started
                    plugins.append({"total": seconds, "result": result, "downloaded": downloads.bytes,
                                    **s3_traffic.snapshot()})  # fmt: skip

                def run_unverified(plugin_name=plugin_name):  # staged load everywhere, no smoke inference
                    started = time.perf_counter()
                    client.create_deployment(f"{plugin_name}-nv", model_uri, config={**CPU, "verify": "false"})
                    unverified.append(time.perf_counter() - started)
                    client.delete_deployment(f"{plugin_name}-nv")

                steps = (run_floor, run_plugin, run_unverified)
                for step in steps if repeat % 2 == 0 else reversed(steps):
                    step()
                if mode == "s3":  # the server-side copy alone: the plugin's multipart copy vs one CopyObject
                    copies.append(time_copies(stack, s3, source.artifact_uri))
                s3_traffic.reset()
                downloads.bytes = 0
                started = time.perf_counter()
                again = client.update_deployment(plugin_name, model_uri, config=CPU)
                noops.append({"total": time.perf_counter() - started, "changed": again["changed"],
                              "bytes_uploaded": again["bytes_uploaded"], "downloaded": downloads.bytes,
                              **s3_traffic.snapshot()})  # fmt: skip
                client.delete_deployment(plugin_name)
    finally:
        stack.stop()
    floor = median([f["total"] for f in floors])
    plugin = median([p["total"] for p in plugins])
    last = plugins[-1]
    return {
        "mode": mode,
        "model_bytes": size,
        "repeats": repeats,
        "floor_seconds": floor,
        "floor_upload_seconds": median([f["upload"] for f in floors]),
        "floor_load_seconds": median([f["load"] for f in floors]),
        "plugin_seconds": plugin,
        "ratio": plugin / floor,
        "plugin_unverified_seconds": median(unverified),
        "ratio_unverified": median(unverified) / floor,
        "mlflow_download_seconds": median([f["download"] for f in floors]) if mode == "local" else 0.0,
        "ratio_vs_floor_plus_download": (
            plugin / median([f["total"] + f["download"] for f in floors]) if mode == "local" else plugin / floor
        ),
        "floor_runs": [round(f["total"], 3) for f in floors],
        "plugin_runs": [round(p["total"], 3) for p in plugins],
        "plugin_bytes_downloaded": last["downloaded"],
        "plugin_bytes_sent": last["sent"],
        "plugin_bytes_received": last["received"],
        "plugin_bytes_through_client": last["downloaded"] + last["sent"] + last["received"],
        "plugin_copy_calls": last["copy_calls"],
        "plugin_bytes_uploaded_reported": last["result"]["bytes_uploaded"],
        "copy_multipart_seconds": median([c["multipart"] for c in copies]) if copies else None,
        "copy_single_seconds": median([c["single"] for c in copies]) if copies else None,
        "noop_seconds": median([n["total"] for n in noops]),
        "noop_runs": [round(n["total"], 3) for n in noops],
        "noop_changed": any(n["changed"] for n in noops),
        "noop_bytes_uploaded": max(n["bytes_uploaded"] for n in noops),
        "noop_bytes_through_client": max(n["sent"] + n["received"] + n["downloaded"] for n in noops),
    }


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--modes", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    arguments.add_argument("--repeats", type=int, default=3)
    args = arguments.parse_args()
    quiet_logs()
    machine = machine_info()
    s3_traffic, downloads = S3Traffic(), DownloadTraffic()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-publish-"))
    results = [run_mode(mode, args.repeats, workdir, s3_traffic, downloads) for mode in args.modes]

    print(f"\nPublish of a {human_bytes(results[0]['model_bytes'])} ONNX model, 1 tritonserver, "
          f"median of {args.repeats} (machine: {machine['nproc']} x {machine['cpu']})")  # fmt: skip
    print(table(
        [[r["mode"], f"{r['floor_seconds']:.2f} s (upload {r['floor_upload_seconds']:.2f} + load "
          f"{r['floor_load_seconds']:.2f})", f"{r['plugin_seconds']:.2f} s", f"{r['ratio']:.2f}",
          f"{r['plugin_unverified_seconds']:.2f} s ({r['ratio_unverified']:.2f})",
          f"{r['mlflow_download_seconds']:.2f} s" if r["mode"] == "local" else "-",
          f"{r['ratio_vs_floor_plus_download']:.2f}" if r["mode"] == "local" else "-",
          human_bytes(r["plugin_bytes_through_client"]), r["plugin_copy_calls"]] for r in results],
        ["MLflow artifacts", "floor: boto3 upload_file + Triton load", "plugin create_deployment",
         "ratio", "verify=false (ratio)", "MLflow download alone", "ratio vs floor + download",
         "bytes through the client", "server-side copy calls"],
    ))  # fmt: skip
    print("\nBytes through the plugin's process during one publish:")
    for r in results:
        print(f"  {r['mode']:5}: downloaded {human_bytes(r['plugin_bytes_downloaded'])}, S3 sent "
              f"{human_bytes(r['plugin_bytes_sent'])}, S3 received {human_bytes(r['plugin_bytes_received'])}, "
              f"CopyObject/UploadPartCopy calls {r['plugin_copy_calls']}")  # fmt: skip
    for r in results:
        if r["copy_multipart_seconds"] is not None:
            print(f"  {r['mode']:5}: server-side copy alone on moto: the store's multipart copy "
                  f"(16 MiB UploadPartCopy parts) {r['copy_multipart_seconds']:.2f} s, one CopyObject "
                  f"{r['copy_single_seconds']:.2f} s; the floor's upload_file {r['floor_upload_seconds']:.2f} s")  # fmt: skip
    print("\nNo-op update (same registered version again):")
    for r in results:
        print(f"  {r['mode']:5}: {r['noop_seconds']:.2f} s, changed={r['noop_changed']}, bytes uploaded "
              f"{r['noop_bytes_uploaded']}, bytes through the client {human_bytes(r['noop_bytes_through_client'])}")  # fmt: skip
    write_json(args.json, {"benchmark": "publish", "machine": machine, "results": results})


if __name__ == "__main__":
    main()
