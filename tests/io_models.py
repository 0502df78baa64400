"""Small LightningModules whose forward() is written the way users write it, for either
Lightning distribution:

* ``projector``: ``forward(self, tokens)`` on float ``[batch, seq, 6]``, one tensor out; the
  callback gets no ``input_names`` (the name comes from forward());
* ``encoder``: ``forward(self, input_ids, attention_mask)`` (int64 ``[batch, seq]`` each, a dict
  example, i.e. keyword arguments) returning ``{"logits": [batch, seq, 2], "pooled": [batch, 8]}``;
* ``two_heads``: ``forward(self, features)`` returning a tuple ``(scores, probabilities)``.

Each is trained for one short epoch by :func:`train`, with the export callback of the package.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_callbacks import callback_class
from lightning_callbacks.packages import lightning_package

VOCAB = 16
_CLASSES: dict[tuple[str, str], type] = {}


def _trainable(base: type, loss: Callable[[Any, Any], torch.Tensor]) -> type:
    """``base`` with training/validation steps computing ``loss(module, batch)`` and Adam."""

    class Trainable(base):  # type: ignore[misc, valid-type]
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return loss(self, batch)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", loss(self, batch))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=0.02)

    return Trainable


def projector_class(package: str) -> type:
    class Projector(_trainable(lightning_package(package).LightningModule, _projector_loss)):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(6, 3)
            self.example_input_array = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(0))

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.layer(tokens))

    return Projector


def _projector_loss(module: Any, batch: Any) -> torch.Tensor:
    tokens, target = batch
    return torch.nn.functional.mse_loss(module(tokens), target)


def encoder_class(package: str) -> type:
    class Encoder(_trainable(lightning_package(package).LightningModule, _encoder_loss)):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, 8)
            self.head = torch.nn.Linear(8, 2)
            ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
            mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
            self.example_input_array = {"input_ids": ids, "attention_mask": mask}

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            hidden = torch.tanh(self.embed(input_ids)) * mask
            pooled = hidden.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            return {"logits": self.head(hidden), "pooled": pooled}

    return Encoder


def _encoder_loss(module: Any, batch: Any) -> torch.Tensor:
    input_ids, attention_mask = batch
    logits = module(input_ids=input_ids, attention_mask=attention_mask)["logits"]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 2), (input_ids % 2).reshape(-1))


def two_heads_class(package: str) -> type:
    class TwoHeads(_trainable(lightning_package(package).LightningModule, _two_heads_loss)):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 3)
            self.example_input_array = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))

        def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            scores = self.layer(features)
            return scores, torch.softmax(scores, dim=-1)

    return TwoHeads


def _two_heads_loss(module: Any, batch: Any) -> torch.Tensor:
    features, labels = batch
    scores, _ = module(features)
    return torch.nn.functional.cross_entropy(scores, labels)


FACTORIES = {"projector": projector_class, "encoder": encoder_class, "two_heads": two_heads_class}


def model_class(kind: str, package: str) -> type:
    """The ``kind`` model as a LightningModule of ``package``, one class per pair."""
    if (kind, package) not in _CLASSES:
        _CLASSES[kind, package] = FACTORIES[kind](package)
    return _CLASSES[kind, package]


def dataset(kind: str, n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    if kind == "projector":
        tokens = torch.randn(n, 5, 6, generator=generator)
        return TensorDataset(tokens, torch.tanh(tokens[..., :3]))
    if kind == "encoder":
        ids = torch.randint(0, VOCAB, (n, 6), generator=generator)
        return TensorDataset(ids, torch.ones_like(ids))
    features = torch.randn(n, 4, generator=generator)
    return TensorDataset(features, (features[:, 0] > 0).long())


def train(kind: str, package: str, workdir: Path, **export_kwargs: Any):
    """Fit the ``kind`` model one short epoch with ``package``'s export callback.

    Returns:
        ``(callback, fitted module)``.
    """
    lightning = lightning_package(package)
    torch.manual_seed(0)
    checkpoint = lightning.ModelCheckpoint(dirpath=workdir / "checkpoints", monitor="val_loss")
    export = callback_class(package)(output_dir=workdir / "exports", **export_kwargs)
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, callbacks=[checkpoint, export],
        default_root_dir=workdir, enable_progress_bar=False, enable_model_summary=False,
        limit_train_batches=4, limit_val_batches=1,
    )  # fmt: skip
    model = model_class(kind, package)()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(
            model,
            DataLoader(dataset(kind, 64, 0), batch_size=16),
            DataLoader(dataset(kind, 16, 1), batch_size=16),
        )
    return export, model


def best_eager(kind: str, package: str, checkpoint_path: str) -> torch.nn.Module:
    model = model_class(kind, package)()
    model.load_state_dict(torch.load(checkpoint_path, weights_only=False)["state_dict"])
    return model.eval()
