"""A tiny real LightningModule trained with ``ExportBestCheckpoint`` (``make demo``, tests).

An MLP regressor learns two smooth functions of 8 features on synthetic data; training takes
a few seconds on CPU::

    from examples.tiny_model import train
    export = train("http://127.0.0.1:5000", registered_model_name="tiny", alias="champion")
    export.model_uri, export.registered_version.version, export.exported_paths["onnx"]
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_callbacks import ExportBestCheckpoint

N_FEATURES = 8
N_OUTPUTS = 2


def make_data(n: int, seed: int = 0) -> TensorDataset:
    """``n`` samples of x ~ N(0, 1)^8 and y = (sin(x0) + x1 * x2 / 2, x3 - x4^2 / 4 + x5 / 2)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=generator)
    y0 = torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
    y1 = x[:, 3] - 0.25 * x[:, 4] ** 2 + 0.5 * x[:, 5]
    y = torch.stack([y0, y1], dim=1)
    y = y + 0.01 * torch.randn(n, N_OUTPUTS, generator=generator)
    return TensorDataset(x, y)


class TinyRegressor(pl.LightningModule):
    """MLP 8 -> hidden -> hidden -> 2 (float32), trained with MSE.

    Args:
        hidden: width of the hidden layers.
        lr: Adam learning rate.
    """

    def __init__(self, hidden: int = 32, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(N_FEATURES, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, N_OUTPUTS),
        )
        self.example_input_array = torch.randn(4, N_FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y), prog_bar=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def train(
    tracking_uri: str | None = None,
    registered_model_name: str | None = None,
    alias: str | None = None,
    max_epochs: int = 3,
    workdir: Path | None = None,
    **export_kwargs: Any,
) -> ExportBestCheckpoint:
    """Train :class:`TinyRegressor` on CPU and export its best checkpoint.

    Args:
        tracking_uri: MLflow tracking URI; metrics go to an ``MLFlowLogger`` run there and
            the exported model to the same run. None: no logger, and the model goes to
            MLflow's default tracking URI (``MLFLOW_TRACKING_URI``).
        registered_model_name: register the exported model under this name.
        alias: registry alias for the new version.
        max_epochs: epochs to train.
        workdir: where checkpoints and exports go (a new temporary directory when None).
        **export_kwargs: more :class:`ExportBestCheckpoint` arguments.

    Returns:
        The callback, with ``model_uri``, ``registered_version``, ``exported_paths`` and
        ``verification`` filled in.
    """
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="tiny-model-"))
    pl.seed_everything(0, verbose=False)
    train_data, val_data = make_data(256, seed=0), make_data(64, seed=1)
    checkpoint = ModelCheckpoint(dirpath=workdir / "checkpoints", monitor="val_loss", mode="min")
    export = ExportBestCheckpoint(
        registered_model_name=registered_model_name,
        alias=alias,
        output_dir=workdir / "exports",
        tracking_uri=tracking_uri,
        **export_kwargs,
    )
    logger: pl.loggers.Logger | bool = False
    if tracking_uri is not None:
        logger = pl.loggers.MLFlowLogger(experiment_name="tiny-model", tracking_uri=tracking_uri)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=logger,
        callbacks=[checkpoint, export],
        default_root_dir=workdir,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(
            TinyRegressor(),
            DataLoader(train_data, batch_size=32, shuffle=True),
            DataLoader(val_data, batch_size=64),
        )
    return export


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    result = train()
    print({fmt: str(path) for fmt, path in result.exported_paths.items()}, result.model_uri)
