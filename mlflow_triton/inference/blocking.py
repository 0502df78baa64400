"""The synchronous predictor: :class:`AsyncTritonPredictor` on a private event loop thread.

Scripts, notebooks and threaded servers call it like any blocking client::

    with TritonPredictor("triton:/http://t1:8000,http://t2:8000") as predictor:
        outputs = predictor.predict("fraud", {"features": x})     # {"scores": ndarray}
        for response in predictor.predict_stream("generator", {"prompt": prompts}):
            ...

The loop runs in a daemon thread for the predictor's lifetime, so connections (aiohttp pools,
gRPC channels) stay open across calls, and any thread may call it at the same time (the
loop serialises nothing but the bookkeeping). It also works where a loop already runs in the
calling thread (Jupyter), which ``asyncio.run`` refuses. Ctrl-C while waiting cancels the
call's requests and re-raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, Coroutine, Iterator, Sequence, TypeVar

import numpy as np

from mlflow_triton.inference.options import PredictSettings
from mlflow_triton.inference.predictor import AsyncTritonPredictor, Connector
from mlflow_triton.inference.streaming import StreamedResponse, stream_responses

T = TypeVar("T")


class TritonPredictor:
    """Blocking predictions over every replica of a target, with connections kept open.

    Args:
        target: as :class:`~mlflow_triton.inference.predictor.AsyncTritonPredictor`.
        connector: ``connector(url, settings)`` -> replica (tests inject fakes).
        **settings: :class:`~mlflow_triton.inference.predictor.PredictSettings` fields.

    Thread-safe. Close with :meth:`close` or ``with``; an unreferenced predictor closes itself.
    """

    def __init__(self, target: str | Sequence[str] = "triton", *, connector: Connector | None = None, **settings: Any) -> None:
        self._async = AsyncTritonPredictor(target, connector=connector, **settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mlflow-triton-predict", daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._thread, self._async)

    @property
    def settings(self) -> PredictSettings:
        return self._async.settings

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:  # KeyboardInterrupt included: stop the call's requests
            future.cancel()
            raise

    def predict(self, name: str, inputs: Any) -> dict[str, np.ndarray]:
        """:meth:`AsyncTritonPredictor.predict`, blocking."""
        return self._call(self._async.predict(name, inputs))

    def predict_stream(self, name: str, inputs: Any) -> Iterator[StreamedResponse]:
        """:meth:`AsyncTritonPredictor.stream`, as a blocking iterator: each response of a
        decoupled model as it arrives (gRPC streaming). Closing the iterator early cancels the
        requests still running."""
        plan = self._call(self._async.stream_plan(name, inputs))
        yield from stream_responses(*plan, self.settings.request_timeout_s)

    def close(self) -> None:
        """Close the connections and stop the loop thread (idempotent)."""
        self._finalizer()

    def __enter__(self) -> "TritonPredictor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown(loop: asyncio.AbstractEventLoop, thread: threading.Thread, predictor: AsyncTritonPredictor) -> None:
    """Close ``predictor``'s connections on its loop, then stop the loop and its thread."""
    if threading.current_thread() is thread:  # collected on its own loop: it cannot wait for itself
        loop.create_task(predictor.close()).add_done_callback(lambda _: loop.stop())
        return
    if loop.is_running():
        try:
            asyncio.run_coroutine_threadsafe(predictor.close(), loop).result(timeout=10)
        except Exception:  # a loop already stopping (interpreter exit): nothing left to close
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
    if not loop.is_running():
        loop.close()
