"""One predict's requests over the READY replicas: concurrency, failover, progress.

A shared queue holds the indices of the requests still to answer; every replica gets
``concurrency`` workers that pull from it, so a faster replica takes more and a slow one
holds no request back. A worker whose replica fails (:func:`~.errors.is_replica_failure`)
puts its request back and leaves the replica out for the rest of the call; the other
replicas' workers pick the request up. A request Triton refuses ends the call at once. The
answers are kept by request index, so they come back in input order whatever the order they
arrived in.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, Awaitable, Mapping, TypeVar

import numpy as np
from mlflow.exceptions import MlflowException

from mlflow_triton.inference.errors import all_replicas_failed, is_replica_failure, request_error
from mlflow_triton.inference.options import PredictSettings
from mlflow_triton.inference.replicas import Replica
from mlflow_triton.inference.served import ServedModel

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Calls of at least this many requests show a progress bar when stderr is a terminal.
PROGRESS_MIN_REQUESTS = 8


class Dispatch:
    """One predict's requests over the READY replicas: a shared queue of request indices and
    ``concurrency`` workers per replica pulling from it; a failed replica's workers put their
    request back and stop."""

    def __init__(
        self, model: ServedModel, arrays: Mapping[str, np.ndarray], slices: list[slice],
        replicas: list[Replica], concurrency: int, settings: PredictSettings,
    ) -> None:  # fmt: skip
        self.model, self.arrays, self.slices, self.replicas = model, arrays, slices, replicas
        self.timeout_s = settings.request_timeout_s
        self.results: list[dict[str, np.ndarray] | None] = [None] * len(slices)
        self.remaining = len(slices)
        self.alive = {r.url for r in replicas}
        self.failures: dict[str, BaseException] = {}
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        per_request = max(1, sum(a.nbytes for a in arrays.values()) // len(slices))
        by_memory = max(1, settings.max_inflight_bytes // (per_request * len(replicas)))
        self.workers = max(1, min(concurrency, by_memory, len(slices)))
        total = next(iter(arrays.values())).shape[0] if model.batched else 1
        self.rows = [len(range(*s.indices(total))) if model.batched else 1 for s in slices]
        self.bar = _progress(settings.progress, len(slices), total, model.name)

    async def run(self) -> list[dict[str, np.ndarray]]:
        """Every request answered, in request order.

        Raises:
            MlflowException: the first refused request's error, or every replica's failure.
        """
        for index in range(len(self.slices)):
            self.queue.put_nowait(index)
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Interleaved, so that the first requests go round-robin rather than all to one replica.
        tasks = [asyncio.create_task(self._worker(r)) for _ in range(self.workers) for r in self.replicas]
        try:
            await self.finished
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.bar.close()
        return self.results  # type: ignore[return-value]

    async def _worker(self, replica: Replica) -> None:
        while not self.finished.done():
            index = await self.queue.get()
            if replica.url not in self.alive:  # left out while this worker waited
                self.queue.put_nowait(index)
                return
            part = self.slices[index]
            chunk = {name: array[part] for name, array in self.arrays.items()}
            try:
                self.results[index] = await _within(self.timeout_s, replica.infer(self.model, chunk))
            except Exception as err:  # classified below by type and status
                if is_replica_failure(err):
                    self.queue.put_nowait(index)
                    self._leave_out(replica, err)
                else:
                    self._end(request_error(err, replica.url, self.model.name), err)
                return
            self.remaining -= 1
            self.bar.update(self.rows[index])
            if self.remaining == 0 and not self.finished.done():
                self.finished.set_result(None)

    def _leave_out(self, replica: Replica, err: BaseException) -> None:
        if replica.url not in self.alive:
            return
        self.alive.discard(replica.url)
        self.failures[replica.url] = err
        if self.alive:
            logger.warning(
                "Triton at %s failed during a predict of %s (%s: %s); its requests go to %s.",
                replica.url, self.model.name, type(err).__name__, err, ", ".join(sorted(self.alive)),
            )  # fmt: skip
        else:
            self._end(all_replicas_failed(self.model.name, self.failures), err)

    def _end(self, error: MlflowException, cause: BaseException) -> None:
        if not self.finished.done():
            error.__cause__ = cause
            self.finished.set_exception(error)


async def _within(seconds: float, awaitable: Awaitable[T]) -> T:
    """``await awaitable``, raising ``TimeoutError`` after ``seconds`` (``asyncio.timeout``
    where it exists: unlike ``wait_for`` it creates no task per request)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(setting: bool | None, requests: int, rows: int, name: str) -> Any:
    """A tqdm bar over rows on stderr, or a stand-in that shows nothing."""
    stream = sys.stderr
    show = setting if setting is not None else (requests >= PROGRESS_MIN_REQUESTS and _is_terminal(stream))
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=rows, unit="row", desc=f"predict {name}", file=stream, dynamic_ncols=True, leave=False)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False
