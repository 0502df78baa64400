"""Run every benchmark (one process each, sequentially) and print one summary table.

Run::

    .venv/bin/python benchmarks/run_all.py                       # ~10 minutes on 2 cores
    .venv/bin/python benchmarks/run_all.py --only publish batching
    .venv/bin/python benchmarks/run_all.py --write benchmarks/RESULTS.md

Each benchmark starts its own embedded stack on loopback ports and stops it. ``--write``
renders the figures, the command and the machine into a Markdown results file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import human_bytes, machine_info, table  # noqa: E402

BENCHMARKS = {
    "publish": ["publish.py"],
    "batching": ["batching.py"],
    "sync": ["sync.py"],
    "concurrent_publish": ["concurrent_publish.py"],
    "export": ["export.py"],
    "publish_overhead": ["publish_overhead.py"],
    "copy_strategy": ["copy_strategy.py"],
    "warmup": ["warmup.py"],
    "fleet": ["fleet.py"],
    "s3_latency": ["s3_latency.py"],
    "predict": ["predict.py"],
}


def run(name: str, out: Path, timeout_s: float) -> tuple[dict[str, Any] | None, float, str]:
    started = time.perf_counter()
    process = subprocess.run(
        [sys.executable, str(HERE / BENCHMARKS[name][0]), "--json", str(out)],
        capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    log = process.stdout + process.stderr
    if process.returncode != 0 or not out.exists():
        return None, seconds, log
    return json.loads(out.read_text()), seconds, log


def _publish_rows(publish: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for r in publish["results"]:
        path = "download + upload" if r["mode"] == "local" else "server-side copy"
        rows.append([f"publish 100 MiB ONNX, {path}", "plugin / (boto3 upload_file + Triton load)",
                     f"{r['ratio']:.2f}  ({r['plugin_seconds']:.2f} s vs {r['floor_seconds']:.2f} s)",
                     "<= 1.2", "yes" if r["ratio"] <= 1.2 else "no"])  # fmt: skip
        if r["mode"] == "local":
            rows.append(["", "plugin / (MLflow download + floor)",
                         f"{r['ratio_vs_floor_plus_download']:.2f}", "", ""])  # fmt: skip
        rows.append(["", "bytes through the plugin's process",
                     f"{human_bytes(r['plugin_bytes_through_client'])}"
                     f" ({r['plugin_copy_calls']} copy calls)", "", ""])  # fmt: skip
        rows.append([f"no-op update ({r['mode']} artifacts)", "bytes uploaded / time",
                     f"{r['noop_bytes_uploaded']} B / {r['noop_seconds']:.2f} s", "0 B, ~1 s",
                     "yes" if r["noop_bytes_uploaded"] == 0 and r["noop_seconds"] <= 1.5 else "no"])  # fmt: skip
    return rows


def _batching_rows(batching: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    ratios = {int(k): v for k, v in batching["ratios"].items()}
    for concurrency, ratio in sorted(ratios.items()):
        on = next(p for p in batching["points"] if p["model"] == "batched" and p["concurrency"] == concurrency)
        off = next(p for p in batching["points"] if p["model"] == "unbatched" and p["concurrency"] == concurrency)
        rows.append([f"dynamic batching, concurrency {concurrency}", "req/s on / off",
                     f"{ratio:.2f}  ({on['requests_per_s']:.0f} vs {off['requests_per_s']:.0f} req/s)",
                     ">= 3" if concurrency == 32 else "",
                     ("yes" if ratio >= 3 else "no") if concurrency == 32 else ""])  # fmt: skip
    return rows


def _sync_rows(sync: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    rows.append([f"no-op sync of {sync['models']} models, 2 replicas", "wall time (fresh ETag cache)",
                 f"{sync['seconds']:.2f} s ({sync['per_model_ms']:.1f} ms/model)", "<= 5 s",
                 "yes" if sync["seconds"] <= 5 else "no"])  # fmt: skip
    if sync.get("watch_seconds") is not None:
        rows.append([f"watch round over {sync['models']} models", "wall time (cache from the last round)",
                     f"{sync['watch_seconds']:.2f} s", "<= 5 s",
                     "yes" if sync["watch_seconds"] <= 5 else "no"])  # fmt: skip
        for label, key in (("calls per no-op sync", "calls_sync"), ("calls per watch round", "calls_watch_round")):
            counts = sync[key]
            flat = (sum(counts.get("registry", {}).values()) <= 1 + sync["models"] // 1000
                    and sum(counts.get("triton (2 replicas)", {}).values()) <= sync["replicas"])  # fmt: skip
            gets = counts.get("s3", {}).get("GetObject", 0)
            met = ("yes" if gets == 0 else "yes, but GETs: S3 has no batch GET") if flat else "no"
            rows.append(["", label, _describe_calls(counts), "no per-model call where a batch exists", met])
        rows.append(["", "real tritonserver: repository index vs loaded models (stats)",
                     f"{sync['real_triton_index_ms']:.0f} ms over {sync['real_triton_index_entries']} "
                     f"folders vs {sync.get('real_triton_stats_ms', float('nan')):.1f} ms", "(report)", ""])  # fmt: skip
    if sync.get("sequential_seconds"):
        rows.append(["", "same sync, one worker", f"{sync['sequential_seconds']:.2f} s", "", ""])
    return rows


def _concurrent_publish_rows(concurrent: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for triton, result in concurrent["results"].items():
        rates = {int(k): v for k, v in result["models_per_s"].items()}
        signs = {int(k): v[-1] for k, v in result["contention"].items()}
        many = max(rates)
        clean = all(s.get("pool full warnings", 0) == 0 and s.get("lease retries (held by another)", 0) == 0
                    and s.get("S3 stores (boto3 clients) created", 0) <= 1 for s in signs.values())  # fmt: skip
        where = "2 stub replicas" if triton == "stub" else "1 real tritonserver"
        rows.append([f"publish {result['models']} tiny models concurrently, {where}",
                     f"models/s, {many} workers / 1",
                     f"{result['ratio']:.2f}x ({rates[many]:.2f} vs {rates[1]:.2f} models/s)",
                     "(report)", ""])  # fmt: skip
        rows.append(["", "pool-full warnings, lease retries, S3 clients per run",
                     f"{signs[many].get('pool full warnings', 0)}, "
                     f"{signs[many].get('lease retries (held by another)', 0)}, "
                     f"{signs[many].get('S3 stores (boto3 clients) created', 0)}",
                     "0, 0, 1", "yes" if clean else "no"])  # fmt: skip
    return rows


def _export_rows(export: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    plain = export["runs"]["export + verify"]
    rows.append(["callback export + verify (tiny_model)", "time / one epoch",
                 f"{export['fraction_of_epoch']:.1f} x  ({plain['export_verify_seconds']:.2f} s vs "
                 f"{1000 * plain['epoch_seconds']:.0f} ms)", "(report)", ""])  # fmt: skip
    return rows


def _publish_overhead_rows(overhead: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for r in overhead["results"]:
        path = "download path (streamed)" if r["mode"] == "local" else "copy path"
        path += ", golden outputs logged" if r.get("golden") else ""
        ratio = r["floor_ratio"]
        publish = r["publish"]
        rows.append([f"publish {r['size_mib']} MiB, {path}", "publish / (raw transfer + Triton's 2 loads)",
                     f"{ratio:.2f}  ({publish['seconds']:.2f} s vs {r['raw_transfer']['seconds']:.2f} s + "
                     f"{publish['load_seconds']:.2f} s)", "<= 1.15", "yes" if ratio <= 1.15 else "no"])  # fmt: skip
        rows.append(["", "(publish - Triton loads) / raw transfer; old: publish / (raw + one load)",
                     f"{r['overhead_ratio']:.2f}; old {r['old_ratio']:.2f}", "", ""])  # fmt: skip
        peak = max(publish["rss_peak"], r["rollback"]["rss_peak"], r["heal"]["rss_peak"]) / 2**20
        rows.append(["", "peak RSS of the publishing process (publish, rollback, heal)",
                     f"{publish['rss_peak'] / 2**20:.0f} / {r['rollback']['rss_peak'] / 2**20:.0f} / "
                     f"{r['heal']['rss_peak'] / 2**20:.0f} MiB (with children {publish['rss_peak_tree'] / 2**20:.0f} MiB)",
                     "<= 300 MiB", "yes" if peak <= 300 else "no"])  # fmt: skip
        back, heal = r["rollback"]["model_bytes_read"], r["heal"]["model_bytes_read"]
        rows.append(["", "model file bytes read by the publisher: rollback / replica heal",
                     f"{human_bytes(back)} / {human_bytes(heal)} ({r['rollback']['seconds']:.2f} s / "
                     f"{r['heal']['seconds']:.2f} s)", "0 B", "yes" if back == heal == 0 else "no"])  # fmt: skip
        noop = r["noop"]["received"] + r["noop"]["streamed_bytes"] + r["noop"]["downloaded_bytes"]
        rows.append(["", "bytes read by a no-op update", human_bytes(noop), "<= 10 KiB",
                     "yes" if noop <= 10 * 1024 else "no"])  # fmt: skip
    return rows


def _copy_strategy_rows(copies: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for r in copies["results"]:
        rows.append([f"server-side copy {r['size_mib']} MiB (moto)", "UploadPartCopy / CopyObject",
                     f"{r['parts_over_single']:.2f}  ({r['upload_part_copy_s']:.2f} s vs {r['copy_object_s']:.2f} s)",
                     "(sets the threshold)", ""])  # fmt: skip
    return rows


def _warmup_rows(warmup: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for flavor, ratio in warmup["ratios"].items():
        cold, warm = (next(r for r in warmup["results"] if r["flavor"] == flavor and r["warmup"] == w)
                      for w in ("false", "true"))  # fmt: skip
        rows.append([f"first request after a reload, {flavor}", "latency without / with warmup",
                     f"{ratio:.1f}  ({cold['first_ms']:.1f} vs {warm['first_ms']:.1f} ms; steady "
                     f"{warm['steady_ms']:.1f} ms)", "(report)", ""])  # fmt: skip
    return rows


def _predict_rows(predict: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for protocol, figures in predict["results"].items():
        rate = {label: figures[label]["rows_per_s"] for label in ("plugin", "hand-written", "one at a time")}
        rows.append([f"predict {predict['rows']:,} rows, max_batch_size {predict['max_batch_size']}, "
                     f"2 replicas, {protocol}", "rows/s: plugin / hand-written asyncio client",
                     f"{figures['ratio']:.2f}  ({rate['plugin']:,.0f} vs {rate['hand-written']:,.0f} rows/s)",
                     ">= 0.9", "yes" if figures["ratio"] >= 0.9 else "no"])  # fmt: skip
        rows.append(["", "plugin / one request at a time",
                     f"{figures['speedup_vs_one_at_a_time']:.2f}  ({rate['one at a time']:,.0f} rows/s)", "", ""])
    return rows


ROW_BUILDERS = {
    "publish": _publish_rows,
    "batching": _batching_rows,
    "sync": _sync_rows,
    "concurrent_publish": _concurrent_publish_rows,
    "export": _export_rows,
    "publish_overhead": _publish_overhead_rows,
    "copy_strategy": _copy_strategy_rows,
    "warmup": _warmup_rows,
    "predict": _predict_rows,
}


def summary_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The summary table's rows, benchmark by benchmark, for those that ran."""
    rows = []
    for name, build in ROW_BUILDERS.items():
        if results.get(name):
            rows.extend(build(results[name]))
    rows += _s3_latency_rows(results.get("s3_latency"))
    return rows


def _s3_latency_rows(latency: dict[str, Any] | None) -> list[list[str]]:
    """One row per operation measured through the delaying S3 proxy (``s3_latency.py``)."""
    if not latency:
        return []
    low, high = (str(d) for d in (latency["delays_ms"][0], latency["delays_ms"][-1]))
    n = latency["models"]
    operations = [
        (f"one-shot sync of {n} models", latency.get("sync"), 10.0),
        (f"watch round over {n} models", latency.get("watch"), 5.0),
        ("no-op update (small repository)", (latency.get("small") or {}).get("update"), 1.0),
        ("rollback (small repository)", (latency.get("small") or {}).get("rollback"), None),
        (f"no-op update (repository of {n} models)", (latency.get("large") or {}).get("update"), 1.0),
        (f"rollback (repository of {n} models)", (latency.get("large") or {}).get("rollback"), None),
        ("no-op update (small repository), staging check as before (repository index)",
         (latency.get("small_before") or {}).get("update"), None),
        (f"no-op update (repository of {n} models), staging check as before (repository index)",
         (latency.get("large_before") or {}).get("update"), None),
    ]  # fmt: skip
    rows = []
    for label, entry, target in operations:
        if not entry or high not in entry:
            continue
        at_high = entry[high]["seconds"]
        measured = f"{at_high:.2f} s"
        if low in entry and low != high:
            measured += f" (at {low} ms: {entry[low]['seconds']:.2f} s; latency cost {at_high - entry[low]['seconds']:+.2f} s)"
        requests = "; ".join(f"{family} {sum(ops.values())}" for family, ops in sorted(entry[high]["s3"].items()))
        requests += f" ({entry[high]['serial_round_trips']} of this process's in series)"
        rows.append([f"S3 at {high} ms per request: {label}", "wall time; S3 requests by client",
                     f"{measured}; {requests or 'none'}", f"<= {target:g} s" if target else "(report)",
                     ("yes" if at_high <= target else "no") if target else ""])  # fmt: skip
    return rows


def _describe_calls(counts: dict[str, dict[str, int]]) -> str:
    """``registry: search 1; s3: ListObjectsV2 2; ...`` for one round's call counts."""
    parts = []
    for side, calls in counts.items():
        named = ", ".join(f"{op.rsplit('/', 1)[-1] if side == 'registry' else op} {n}" for op, n in sorted(calls.items()))
        parts.append(f"{side.split(' ')[0]}: {named or 'none'}")
    return "; ".join(parts)


HEADER = ["benchmark", "measure", "measured", "target", "met"]
NOTES = "## Notes"
RAW = "## Raw figures"


def render_markdown(
    results: dict[str, Any], durations: dict[str, float], machine: dict[str, Any], command: str,
    notes: str = "",
) -> str:  # fmt: skip
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{command}` (run from the repository root).",
        "",
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} RAM, load average at "
        f"start {machine['load_average']}; Python {machine['python']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ".",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(results)]
    lines += ["", "Runtimes: " + ", ".join(f"{k} {v:.0f} s" for k, v in durations.items()) + ".", ""]
    if notes:
        lines += [notes.rstrip(), ""]
    lines += [RAW, "", "```json", json.dumps(results, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    arguments.add_argument("--write", type=Path, help="write a Markdown results file")
    arguments.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark")
    args = arguments.parse_args()
    machine = machine_info()
    results: dict[str, Any] = {}
    durations: dict[str, float] = {}
    failed = []
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        for name in args.only:
            print(f"== {name} ...", flush=True)
            figures, seconds, log = run(name, Path(tmp) / f"{name}.json", args.timeout)
            durations[name] = seconds
            report = [line for line in log.splitlines() if line.strip()]
            print("\n".join(report[-22:]), flush=True)
            if figures is None:
                failed.append(name)
                print(f"== {name} FAILED after {seconds:.0f} s", flush=True)
            else:
                results[name] = figures
                print(f"== {name} done in {seconds:.0f} s\n", flush=True)
    print(f"\nSummary ({machine['nproc']} x {machine['cpu']}, load average at start {machine['load_average']}):")
    print(table(summary_rows(results), HEADER))
    print("runtimes: " + ", ".join(f"{k} {v:.0f} s" for k, v in durations.items()))
    if args.write:
        command = ".venv/bin/python benchmarks/run_all.py" + (
            f" --only {' '.join(args.only)}" if args.only != list(BENCHMARKS) else ""
        ) + f" --write {args.write}"
        notes = ""
        if args.write.exists() and NOTES in (previous := args.write.read_text()):
            notes = previous[previous.index(NOTES):]  # hand-written analysis survives a rerun
            notes = notes[: notes.index(RAW)] if RAW in notes else notes
        args.write.write_text(render_markdown(results, durations, machine, command, notes))
        print(f"wrote {args.write}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
