"""Shared helpers for the benchmarks: machine info, S3 byte counters, output.

Every benchmark script prints a human-readable report and, with ``--json PATH``, writes its
figures for ``run_all.py``. Nothing here is imported by the package or the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping

ROOT = Path(__file__).resolve().parent.parent
for entry in (str(ROOT), str(ROOT / "tests")):
    if entry not in sys.path:
        sys.path.insert(0, entry)

MB = 1024 * 1024


def parser(description: str) -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    arguments.add_argument("--workdir", type=Path, help="where stacks keep logs (default: a temp dir)")
    return arguments


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, memory and the load average when the benchmark started."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    versions = {}
    for module in ("mlflow", "boto3", "moto", "onnxruntime", "torch", "tritonclient", "pytriton"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[module] = version({"pytriton": "nvidia-pytriton"}.get(module, module))
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": memory,
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "versions": versions,
    }


class S3Traffic:
    """Bytes that go through this process's boto3 clients, per S3 operation.

    Hooks the default boto3 session, so it sees the plugin's store and MLflow's artifact
    client alike: request bodies sent (``PutObject``, ``UploadPart``...) and object bodies
    received (``GetObject``). Server-side copies (``CopyObject``, ``UploadPartCopy``) move
    no body through the client; they are counted as calls.
    """

    def __init__(self) -> None:
        import boto3

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        self._lock = threading.Lock()
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        events = boto3.DEFAULT_SESSION.events
        events.register("before-send.s3", self._before_send)
        events.register("after-call.s3", self._after_call)

    def _before_send(self, request, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        size = int(request.headers.get("Content-Length", 0) or 0)
        with self._lock:
            self.sent[operation] += size
            self.calls[operation] += 1

    def _after_call(self, parsed, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        if operation == "GetObject":
            with self._lock:
                self.received[operation] += int(parsed.get("ContentLength", 0) or 0)

    def reset(self) -> None:
        with self._lock:
            self.sent.clear()
            self.received.clear()
            self.calls.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "sent": sum(self.sent.values()),
                "received": sum(self.received.values()),
                "copy_calls": self.calls["CopyObject"] + self.calls["UploadPartCopy"],
                "calls": dict(self.calls),
            }


class DownloadTraffic:
    """Bytes of model files the plugin downloads (MLflow's proxied HTTP artifacts included)."""

    def __init__(self) -> None:
        from mlflow_triton.repository import transfer

        self.bytes = 0
        original = transfer.download_artifact
        counter = self

        def download(uri, destination, model_uri=None):
            path = original(uri, destination, model_uri)
            counter.bytes += sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
            return path

        transfer.download_artifact = download  # the transport's one download call


@contextlib.contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    result = {"seconds": 0.0}
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count} B"


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path | None, figures: Mapping[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(figures, indent=2, default=str))


def quiet_logs() -> None:
    """Keep the benchmark output readable: warnings only, no MLflow/tqdm chatter."""
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for noisy in ("pytorch_lightning", "lightning", "lightning.pytorch", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore")
