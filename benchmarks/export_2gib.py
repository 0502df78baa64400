"""Export a real model over 2 GiB to ONNX: the external-data path, measured (not run in CI).

Protobuf cannot serialise a message of 2 GiB or more, so ``lightning_callbacks.export.export_onnx``
writes such a model's weights to ``model.onnx.data`` beside ``model.onnx`` (the suite tests that
path with a lowered threshold; this runs it for real). The model is two 16384 x 16384 float32
``Linear`` layers (2.0 GiB of weights plus biases). It reports the export time, the two files'
sizes, onnxruntime's answer against eager (max abs difference) and the peak RSS of this process.

Needs about 8 GiB of memory and a few minutes on 2 cores.

Run::

    .venv/bin/python benchmarks/export_2gib.py
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

from _common import machine_info, parser, quiet_logs, write_json

WIDTH = 16384


def main() -> None:
    import numpy as np
    import onnxruntime
    import torch

    from lightning_callbacks.export import export_onnx, onnx_uses_external_data
    from lightning_callbacks.model_io import IONames

    arguments = parser(__doc__.splitlines()[0])
    args = arguments.parse_args()
    quiet_logs()
    machine = machine_info()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.Linear(WIDTH, WIDTH)).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    example = (torch.randn(2, WIDTH),)
    names = IONames(("x",), ("y",))
    with tempfile.TemporaryDirectory(prefix="bench-export-2gib-", dir=args.workdir) as tmp:
        path = Path(tmp) / "model.onnx"
        started = time.perf_counter()
        with torch.no_grad():
            export_onnx(model, example, path, names)
        export_seconds = time.perf_counter() - started
        files = {p.name: p.stat().st_size for p in Path(tmp).iterdir()}
        external = onnx_uses_external_data(path)
        started = time.perf_counter()
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (onnx_out,) = session.run(["y"], {"x": example[0].numpy()})
        ort_seconds = time.perf_counter() - started
        with torch.no_grad():
            eager = model(*example).numpy()
    figures = {
        "benchmark": "export_2gib",
        "machine": machine,
        "weight_bytes": weight_bytes,
        "export_seconds": export_seconds,
        "files": files,
        "external_data": external,
        "onnxruntime_load_and_run_seconds": ort_seconds,
        "max_abs_diff": float(np.max(np.abs(onnx_out - eager))),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(f"\nExport of {weight_bytes / 2**30:.2f} GiB of weights to ONNX "
          f"(machine: {machine['nproc']} x {machine['cpu']}, load {machine['load_average']}):")  # fmt: skip
    print(f"  export {export_seconds:.1f} s; files {files}; external data: {external}")
    print(f"  onnxruntime load + run {ort_seconds:.1f} s; max |onnx - eager| = {figures['max_abs_diff']:.2e}")
    print(f"  peak RSS {figures['peak_rss_mib']:.0f} MiB")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
