"""A tiny token tagger for the callback's tests, built on either Lightning distribution.

``tokens`` (int64, ``[batch, seq]``) -> embedding -> a 1-D convolution over the sequence
-> ``scores`` (float32, ``[batch, seq, 2]``): a real model whose sequence axis must stay
variable from the export to Triton. It learns whether each token is even.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_callbacks import callback_class
from lightning_callbacks.packages import lightning_package

VOCAB = 32
DYNAMIC_AXES = {"tokens": {1: "seq"}, "scores": {1: "seq"}}


def tagger_class(package: str) -> type:
    """The tagger as a LightningModule of ``package`` (``lightning`` or ``pytorch_lightning``)."""
    base = lightning_package(package).LightningModule

    class Tagger(base):  # type: ignore[misc, valid-type]
        def __init__(self, dim: int = 16) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, dim)
            self.conv = torch.nn.Conv1d(dim, dim, kernel_size=3, padding=1)
            self.head = torch.nn.Linear(dim, 2)
            self.example_input_array = torch.randint(0, VOCAB, (3, 6), generator=torch.Generator().manual_seed(0))

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            hidden = self.embed(tokens).transpose(1, 2)
            hidden = torch.relu(self.conv(hidden)).transpose(1, 2)
            return self.head(hidden)

        def _loss(self, batch: Any) -> torch.Tensor:
            tokens, labels = batch
            return torch.nn.functional.cross_entropy(self(tokens).reshape(-1, 2), labels.reshape(-1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self._loss(batch)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", self._loss(batch))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=0.05)

    return Tagger


def token_data(n: int, seq: int, seed: int) -> TensorDataset:
    tokens = torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))
    return TensorDataset(tokens, tokens % 2)


def train_tagger(package: str, workdir: Path, max_epochs: int = 2, trainer_kwargs: dict | None = None, **export_kwargs: Any):
    """Fit the tagger with the export callback of ``package``; returns (callback, trainer)."""
    lightning = lightning_package(package)
    torch.manual_seed(0)
    checkpoint = lightning.ModelCheckpoint(dirpath=workdir / "checkpoints", monitor="val_loss")
    export = callback_class(package)(
        input_names=["tokens"], output_names=["scores"], dynamic_axes=DYNAMIC_AXES,
        output_dir=workdir / "exports", **export_kwargs,
    )  # fmt: skip
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
        callbacks=[checkpoint, export], default_root_dir=workdir, enable_progress_bar=False,
        enable_model_summary=False, limit_train_batches=4, limit_val_batches=1,
        **(trainer_kwargs or {}),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(
            tagger_class(package)(),
            DataLoader(token_data(128, 10, 0), batch_size=32),
            DataLoader(token_data(32, 10, 1), batch_size=32),
        )
    return export, trainer


def best_eager(package: str, checkpoint_path: str) -> torch.nn.Module:
    model = tagger_class(package)()
    model.load_state_dict(torch.load(checkpoint_path, weights_only=False)["state_dict"])
    return model.eval()
