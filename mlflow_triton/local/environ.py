"""Environment variables set for a block and put back exactly as they were after it."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Iterator


@contextmanager
def preserved_environ(keys: Iterable[str]) -> Iterator[None]:
    """After the block, each of ``keys`` has its value from before it again, or is unset if it
    was unset, whoever changed it inside (``os.environ.update``, ``mlflow.set_experiment``)."""
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
