"""Server-side copy strategy: one ``CopyObject`` vs parallel ``UploadPartCopy``, by size.

The repository store copies an object with one ``CopyObject`` up to
``mlflow_triton.repository.s3_store.SINGLE_COPY_MAX_BYTES`` and with the transfer manager's parallel
``UploadPartCopy`` (16 MiB parts, 10 at a time) above it. This measures both, side by side and
alternating, on a moto S3 server of its own, at 16 MiB to 1 GiB, and prints the ratio.

What it can and cannot show: moto copies inside one Python process, so it measures the request
pattern's own cost (per-request overhead, and moto re-reading the source for each part), not
AWS's internal copy bandwidth. AWS allows ``CopyObject`` up to 5 GiB and requires multipart
copy above it; the threshold must stay at or below that.

Run::

    .venv/bin/python benchmarks/copy_strategy.py --sizes 16 64 256 1024
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from _common import MB, machine_info, median, parser, quiet_logs, table, write_json


def main() -> None:
    import boto3

    from mlflow_triton.local.processes import free_port
    from mlflow_triton.local.servers import moto_s3
    from mlflow_triton.repository.store import transfer_config

    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--sizes", nargs="+", type=int, default=[16, 64, 256, 1024], help="MiB")
    arguments.add_argument("--repeats", type=int, default=3)
    args = arguments.parse_args()
    quiet_logs()
    machine = machine_info()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-copy-"))
    port = free_port()
    server = moto_s3(port, workdir / "moto.log")
    server.start()
    rows = []
    try:
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="copy")
        config = transfer_config()
        for size in args.sizes:
            s3.upload_fileobj(_Zeros(size * MB), "copy", f"source-{size}", Config=config)
            source = {"Bucket": "copy", "Key": f"source-{size}"}
            single, parts = [], []
            for repeat in range(args.repeats):
                order = ("single", "parts") if repeat % 2 == 0 else ("parts", "single")
                for kind in order:
                    started = time.perf_counter()
                    if kind == "single":
                        s3.copy_object(CopySource=source, Bucket="copy", Key="target")
                        single.append(time.perf_counter() - started)
                    else:
                        s3.copy(source, "copy", "target", Config=config)
                        parts.append(time.perf_counter() - started)
            s3.delete_object(Bucket="copy", Key=f"source-{size}")
            rows.append({"size_mib": size, "copy_object_s": median(single), "upload_part_copy_s": median(parts),
                         "parts_over_single": median(parts) / median(single)})  # fmt: skip
    finally:
        server.stop()
    print(f"\nServer-side copy on moto (machine: {machine['nproc']} x {machine['cpu']}, load {machine['load_average']})")
    print(table(
        [[f"{r['size_mib']} MiB", f"{r['copy_object_s']:.2f} s", f"{r['upload_part_copy_s']:.2f} s",
          f"{r['parts_over_single']:.2f}"] for r in rows],
        ["size", "one CopyObject", "UploadPartCopy x N (16 MiB, 10 parallel)", "parts / single"],
    ))  # fmt: skip
    write_json(args.json, {"benchmark": "copy_strategy", "machine": machine, "results": rows})


class _Zeros:
    """A forward-only stream of ``size`` zero bytes (no buffer of the object's size)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, amount: int = -1) -> bytes:
        amount = self.left if amount is None or amount < 0 else min(amount, self.left)
        self.left -= amount
        return bytes(amount)


if __name__ == "__main__":
    main()
