"""Independent repository reads at once: one round trip of latency instead of one per read.

Against AWS S3 every request costs 10-30 ms of latency whatever its size, and S3 has no batch
GET; requests that do not depend on each other therefore overlap (boto3 clients are
thread-safe)::

    config, listing = concurrently(
        lambda: store.read_bytes("fraud/config.pbtxt"), lambda: store.list_dir("fraud/")
    )
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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
