"""Export cost: ``ExportBestCheckpoint`` export + verification vs one training epoch.

Trains ``examples/tiny_model.py``'s ``TinyRegressor`` on its synthetic data exactly as
``train()`` does (same data, batch sizes, CPU trainer), plus a timing callback, so each
epoch's wall time (training steps + validation) is measured. At fit end the callback exports
the best checkpoint to TorchScript and ONNX and verifies both against eager at batch 1 and
``verify_batch_size``: that call is timed. A second fit also logs and registers the model in
an MLflow server (embedded stack, artifacts on its S3) to show the logging cost separately.

Run::

    .venv/bin/python benchmarks/export.py              # ~1 minute
    .venv/bin/python benchmarks/export.py --no-mlflow

Each fit exports ONNX with one exporter: ``torchscript`` (the default) and ``dynamo``
(``torch.export``), so the report gives the export cost of each.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from _common import machine_info, median, parser, quiet_logs, table, write_json


def fit(epochs: int, workdir: Path, tracking_uri: str | None, exporter: str = "torchscript") -> dict[str, Any]:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from examples.tiny_model import TinyRegressor, make_data
    from lightning_callbacks import ExportBestCheckpoint

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.epochs: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:  # after this epoch's validation
            self.epochs.append(time.perf_counter() - self._start)

    pl.seed_everything(0, verbose=False)
    train_data, val_data = make_data(256, seed=0), make_data(64, seed=1)  # as tiny_model.train()
    checkpoint = ModelCheckpoint(dirpath=workdir / "checkpoints", monitor="val_loss", mode="min")
    logging_on = tracking_uri is not None
    export = ExportBestCheckpoint(
        output_dir=workdir / "exports", log_to_mlflow=logging_on, tracking_uri=tracking_uri,
        registered_model_name="tiny-bench" if logging_on else None, onnx_exporter=exporter,
    )  # fmt: skip
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
        callbacks=[checkpoint, export, timer], default_root_dir=workdir,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        trainer.fit(
            TinyRegressor(),
            DataLoader(train_data, batch_size=32, shuffle=True),
            DataLoader(val_data, batch_size=64),
        )
    steady = timer.epochs[1:] or timer.epochs  # the first epoch pays one-time warm-up
    return {
        "epochs": timer.epochs,
        "epoch_seconds": median(steady),
        "exporter": exporter,
        "export_verify_seconds": export.timings["export_verify"],  # the callback's own timings
        "log_seconds": export.timings.get("upload", 0.0),
        "verification": [
            {"format": r.format, "batch_size": r.batch_size, "max_abs_diff": r.max_abs_diff, "passed": r.passed}
            for r in export.verification
        ],
        "model_uri": export.model_uri,
    }


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--epochs", type=int, default=5)
    arguments.add_argument("--no-mlflow", action="store_true", help="skip the fit that logs to MLflow")
    args = arguments.parse_args()
    quiet_logs()
    machine = machine_info()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-export-"))
    runs = {"export + verify": fit(args.epochs, workdir / "plain", None)}
    runs["export + verify, dynamo ONNX exporter"] = fit(args.epochs, workdir / "dynamo", None, "dynamo")
    if not args.no_mlflow:
        from mlflow_triton.local.stack import LocalStack

        stack = LocalStack(workdir / "stack", replicas=0).start()
        try:
            with stack.exported_env():
                runs["export + verify + MLflow log/register"] = fit(args.epochs, workdir / "logged", stack.tracking_uri)
        finally:
            stack.stop()

    plain = runs["export + verify"]
    rows = []
    for label, run in runs.items():
        cost = run["export_verify_seconds"] + run["log_seconds"]
        rows.append([label, f"{run['epoch_seconds'] * 1000:.0f} ms", f"{run['export_verify_seconds']:.2f} s",
                     f"{run['log_seconds']:.2f} s" if run["log_seconds"] else "-",
                     f"{cost / run['epoch_seconds']:.1f} x"])  # fmt: skip
    print(f"\nExportBestCheckpoint on examples/tiny_model.py (TinyRegressor 8-32-32-2, 256 samples, batch 32, "
          f"{args.epochs} epochs, CPU; machine: {machine['nproc']} x {machine['cpu']})")  # fmt: skip
    print(table(rows, ["fit", "one epoch (median, train + val)", "export + verify", "MLflow log + register",
                       "cost / epoch"]))  # fmt: skip
    print("verification:", ", ".join(
        f"{v['format']}@{v['batch_size']} max|diff| {v['max_abs_diff']:.1e}" for v in plain["verification"]
    ))  # fmt: skip
    write_json(args.json, {"benchmark": "export", "machine": machine, "epochs": args.epochs, "runs": runs,
                           "fraction_of_epoch": plain["export_verify_seconds"] / plain["epoch_seconds"]})  # fmt: skip


if __name__ == "__main__":
    main()
