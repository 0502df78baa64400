"""Train with 2 CPU processes (DDP, gloo) and the export callback; run by test_callback_ddp.py.

Lightning's DDP launcher starts rank 1 by running this script again, so it is a script, not
a test. Rank 0's MLflow upload is made slow on purpose (``--slow-upload`` seconds before the
real upload) and the process group timeout is shorter than that, so a rank waiting for the
upload at a collective would fail. Each rank writes ``rank-<r>.json`` into ``workdir``: how
many exports it ran and how long each export hook held it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import lightning_callbacks.upload as upload_module  # noqa: E402
from examples.tiny_model import make_data  # noqa: E402
from lightning_callbacks import LightningExportBestCheckpoint  # noqa: E402


class Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        self.example_input_array = torch.randn(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class CountingExport(LightningExportBestCheckpoint):
    """Records, per rank, the exports run and how long each export hook held the rank."""

    exports = 0
    hook_seconds: list[float] = []

    def _export_and_verify(self, *args, **kwargs):
        type(self).exports += 1
        return super()._export_and_verify(*args, **kwargs)

    def _maybe_export(self, trainer, pl_module, final):
        start = time.perf_counter()
        super()._maybe_export(trainer, pl_module, final)
        type(self).hook_seconds.append(round(time.perf_counter() - start, 3))


class ShortCollectiveTimeout(L.Callback):
    """Once both ranks have started (which takes long on a loaded machine), lower the
    process group's timeout below the injected upload time. torch has no public setter for
    an existing group's timeout; this test harness uses the private one on purpose."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_start(self, trainer, pl_module) -> None:
        from torch.distributed.distributed_c10d import _set_pg_timeout

        _set_pg_timeout(timedelta(seconds=self.seconds))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("registered_model_name")
    parser.add_argument("--slow-upload", type=float, default=8.0)
    parser.add_argument("--pg-timeout", type=float, default=4.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--upload-in-hook", action="store_true", help="background_upload=False")
    args = parser.parse_args()

    real_log_model = upload_module.log_model

    def slow_log_model(*a, **k):  # the injected slow artifact upload
        time.sleep(args.slow_upload)
        return real_log_model(*a, **k)

    upload_module.log_model = slow_log_model
    L.seed_everything(0, verbose=False)
    checkpoint = L.callbacks.ModelCheckpoint(dirpath=args.workdir / "checkpoints", monitor="val_loss")
    export = CountingExport(
        formats=("onnx",), export_on="best", registered_model_name=args.registered_model_name,
        alias="best", output_dir=args.workdir / "exports", background_upload=not args.upload_in_hook,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", devices=2, num_nodes=1, max_epochs=args.epochs, logger=False,
        strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=300)),
        callbacks=[ShortCollectiveTimeout(args.pg_timeout), checkpoint, export], enable_progress_bar=False, enable_model_summary=False,
        limit_train_batches=4, limit_val_batches=2, default_root_dir=args.workdir,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(
            Regressor(), DataLoader(make_data(128, 0), batch_size=16), DataLoader(make_data(64, 1), batch_size=16)
        )
    rank = trainer.global_rank
    result = {
        "rank": rank, "exports": CountingExport.exports, "hook_seconds": CountingExport.hook_seconds,
        "best_model_path": checkpoint.best_model_path, "last_exported": export.last_exported_checkpoint,
        "registered_version": export.registered_version.version if export.registered_version else None,
        "pid": os.getpid(),
    }  # fmt: skip
    (args.workdir / f"rank-{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
