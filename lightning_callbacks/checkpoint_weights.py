"""Which checkpoint is exported, and reading its weights into the module for the export."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import numpy as np
import torch
from fsspec.core import url_to_fs

logger = logging.getLogger(__name__)


def find_checkpoint_callback(
    trainer: Any, given: Any, owner: str, error: type[Exception]
) -> Any:
    """The ``ModelCheckpoint`` whose best model is exported.

    Args:
        trainer: the Trainer.
        given: the callback's ``checkpoint_callback`` argument, or None.
        owner: the exporting callback's class name, for messages.
        error: the Lightning package's ``MisconfigurationException``.

    Returns:
        ``given``, else the trainer's first ModelCheckpoint with a ``monitor``, else its first.

    Raises:
        Exception: ``error`` when ``given`` is not one of the trainer's callbacks, or the
            trainer has no ModelCheckpoint.
    """
    candidates = trainer.checkpoint_callbacks
    if given is not None:
        if given not in candidates:
            raise error(
                f"{owner}(checkpoint_callback=...) was given a ModelCheckpoint that is not in the "
                "Trainer's callbacks.\nHINT: pass the same instance to Trainer(callbacks=[...])."
            )
        return given
    if not candidates:
        raise error(
            f"{owner} exports the best checkpoint, but the Trainer has no ModelCheckpoint "
            "callback.\nHINT: add `ModelCheckpoint(monitor='val_loss')` to "
            "Trainer(callbacks=[...]) and keep `enable_checkpointing=True`."
        )
    chosen = ([c for c in candidates if getattr(c, "monitor", None)] or candidates)[0]
    if len(candidates) > 1:
        logger.info(
            "%s follows ModelCheckpoint(monitor=%r, dirpath=%s) of %d; pass "
            "checkpoint_callback= to choose another",
            owner, chosen.monitor, chosen.dirpath, len(candidates),
        )  # fmt: skip
    return chosen


def checkpoint_exists(path: str) -> bool:
    filesystem, local = url_to_fs(path)
    return filesystem.exists(local)


def numpy_dtype(precision: str) -> Any:
    return {"fp32": np.float32, "fp16": np.float16}.get(precision, np.float32)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """numpy has no bfloat16: bf16 tensors become float32 arrays."""
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.detach().to("cpu").numpy()


@contextlib.contextmanager
def weights_from(module: torch.nn.Module, checkpoint_path: str | None) -> Iterator[None]:
    """Load ``checkpoint_path``'s ``state_dict`` into ``module``; restore the weights on exit."""
    if checkpoint_path is None:
        yield
        return
    # The checkpoint was written by this Trainer's ModelCheckpoint: full (non weights-only)
    # loading is safe and also accepts hyper-parameters of custom types.
    filesystem, local = url_to_fs(checkpoint_path)
    with filesystem.open(local, "rb") as f:
        checkpoint = torch.load(f, map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if state is None:
        raise ValueError(
            f"{checkpoint_path} is not a Lightning checkpoint: it has no 'state_dict' entry."
        )
    original = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        module.load_state_dict(original)
        raise ValueError(
            f"The weights in {checkpoint_path} do not fit {type(module).__name__}: {err}"
        ) from err
    logger.info("loaded weights of %s", checkpoint_path)
    try:
        yield
    finally:
        module.load_state_dict(original)
