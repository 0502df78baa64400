"""Independent repository reads at once: one round trip of latency instead of one per read;
and work that runs beside the caller until it asks for the result (:func:`in_background`).

Against AWS S3 every request costs 10-30 ms of latency whatever its size, and S3 has no batch
GET; requests that do not depend on each other therefore overlap (boto3 clients are
thread-safe)::

    config, listing = concurrently(
        lambda: store.read_bytes("fraud/config.pbtxt"), lambda: store.list_dir("fraud/")
    )
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` at the same time and return their results in order.

    The first runs in the calling thread, each other one in a thread of its own. Every call
    has finished when this returns or raises, so none is left writing behind the caller.

    Raises:
        BaseException: the exception of the first call (in argument order) that raised.
    """
    if len(calls) < 2:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=len(calls) - 1, thread_name_prefix="repository-io") as pool:
        others = [pool.submit(call) for call in calls[1:]]
        try:
            first = calls[0]()
        except BaseException:
            for future in others:
                future.cancel()
            raise
    return [first] + [future.result() for future in others]


def in_background(work: Callable[..., Any], *args: Any, thread_name: str) -> Future:
    """``work(*args)`` started in a thread of its own; the caller collects it with
    ``result()`` (a publish's version-folder build, its local reference run)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
    try:
        return pool.submit(work, *args)
    finally:
        pool.shutdown(wait=False)
