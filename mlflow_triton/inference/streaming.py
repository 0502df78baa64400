"""Streaming: a decoupled model's responses, each handed over as it arrives (gRPC only).

A Triton model with ``model_transaction_policy { decoupled: true }`` may answer one request
with any number of responses, at its own pace (token by token, frame by frame). Only gRPC's
bidirectional stream carries them. The requests (the rows split as for predict) go out on
one stream to one READY gRPC replica; every response is yielded when it arrives, tagged with
the request it answers. Each request asks for Triton's empty final response
(``enable_empty_final_response``) so that the stream knows when every request is complete:
that option exists in tritonclient's synchronous gRPC streaming API, so the stream runs on
its thread and hands responses over through a queue (thread-safe, and to an asyncio loop
through ``call_soon_threadsafe``).

A replica that cannot open the stream is skipped for the next one; once responses have been
yielded, a failure ends the iteration with the error (the caller saw part of the answer).
"""

from __future__ import annotations

import asyncio
import queue
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlparse

import numpy as np
from mlflow.exceptions import MlflowException

from mlflow_triton.inference.errors import all_replicas_failed, is_replica_failure, request_error
from mlflow_triton.inference.served import ServedModel

FINAL_RESPONSE_PARAMETER = "triton_final_response"


@dataclass(frozen=True)
class StreamedResponse:
    """One response of a decoupled model.

    Attributes:
        request: index of the request it answers (rows are split as for predict: request
            ``i`` holds the ``i``-th slice of rows; 0 when the inputs fit one request).
        outputs: ``{mlflow_output_name: ndarray}`` of the outputs this response carries.
    """

    request: int
    outputs: dict[str, np.ndarray]


#: ``(grpc urls, model, {triton_name: array}, request slices)``: what a stream sends where.
StreamPlan = tuple[list[str], ServedModel, dict[str, np.ndarray], list[slice]]

#: What the stream's thread hands over: ``(result, error)`` as tritonclient's callback gets them.
Item = tuple[Any, Any]


def check_streamable(model: ServedModel, urls: Sequence[str]) -> list[str]:
    """The gRPC URLs among ``urls``, or INVALID_PARAMETER_VALUE saying what streaming needs."""
    grpc_urls = [u for u in urls if urlparse(u).scheme == "grpc"]
    if not grpc_urls:
        raise MlflowException.invalid_parameter_value(
            f"Streaming {model.name!r} needs gRPC: list the replicas as grpc://host:port in the "
            "target (Triton's gRPC port, 8001 by default), e.g. triton:/grpc://triton:8001."
        )
    return grpc_urls


class _Stream:
    """One open gRPC stream with every request sent; responses arrive through ``sink``."""

    def __init__(self, url: str, model: ServedModel, arrays: Mapping[str, np.ndarray], slices: list[slice], sink: Callable[[Item], None]) -> None:
        import tritonclient.grpc as grpcclient

        self.url, self.model = url, model
        self.client = grpcclient.InferenceServerClient(urlparse(url).netloc)
        try:
            self.client.start_stream(callback=lambda result, error: sink((result, error)))
            wanted = [grpcclient.InferRequestedOutput(t.triton_name) for t in model.outputs]
            for index, part in enumerate(slices):
                requests = []
                for tensor in model.inputs:
                    array = arrays[tensor.triton_name][part]
                    request = grpcclient.InferInput(tensor.triton_name, list(array.shape), tensor.datatype)
                    request.set_data_from_numpy(array)
                    requests.append(request)
                self.client.async_stream_infer(
                    model.name, requests, outputs=wanted, request_id=str(index),
                    enable_empty_final_response=True,
                )  # fmt: skip
        except BaseException:
            self.close(cancel=True)
            raise

    def response(self, item: Item) -> tuple[StreamedResponse | None, bool]:
        """``(response or None for an empty final one, whether its request is complete)``.

        Raises:
            The stream's error, as the caller should see it (see :mod:`.errors`).
        """
        result, error = item
        if error is not None:
            if is_replica_failure(error):
                raise all_replicas_failed(self.model.name, {self.url: error}) from error
            raise request_error(error, self.url, self.model.name) from error
        answer = result.get_response()
        final = FINAL_RESPONSE_PARAMETER in answer.parameters and answer.parameters[FINAL_RESPONSE_PARAMETER].bool_param
        outputs = {}
        for tensor in self.model.outputs:
            value = result.as_numpy(tensor.triton_name)
            if value is not None:
                outputs[tensor.mlflow_name] = value
        request = int(answer.id) if answer.id.isdigit() else 0
        return (StreamedResponse(request, outputs) if outputs else None), final

    def close(self, cancel: bool) -> None:
        try:
            self.client.stop_stream(cancel_requests=cancel)
        finally:
            self.client.close()


def _open(urls: Sequence[str], model: ServedModel, arrays, slices, sink) -> _Stream:
    """A stream on the first replica that opens one; replica failures move to the next."""
    failures: dict[str, BaseException] = {}
    for url in urls:
        try:
            return _Stream(url, model, arrays, slices, sink)
        except Exception as err:  # tritonclient raises InferenceServerException and socket errors
            if not is_replica_failure(err):
                raise request_error(err, url, model.name) from err
            failures[url] = err
    raise all_replicas_failed(model.name, failures)


def stream_responses(
    urls: Sequence[str], model: ServedModel, arrays: Mapping[str, np.ndarray], slices: list[slice],
    timeout_s: float,
) -> Iterator[StreamedResponse]:  # fmt: skip
    """Yield each response of ``model`` to the requests as it arrives (blocking iterator).

    Raises:
        MlflowException: TEMPORARILY_UNAVAILABLE when no replica opens a stream, or none
            answers for ``timeout_s``; the model's error otherwise.
    """
    items: queue.Queue[Item] = queue.Queue()
    stream = _open(urls, model, arrays, slices, items.put)
    complete = False
    try:
        pending = len(slices)
        while pending:
            try:
                item = items.get(timeout=timeout_s)
            except queue.Empty:
                raise all_replicas_failed(model.name, {stream.url: TimeoutError(f"no response for {timeout_s} s")}) from None
            response, final = stream.response(item)
            pending -= final
            if response is not None:
                yield response
        complete = True
    finally:
        stream.close(cancel=not complete)


async def astream_responses(
    urls: Sequence[str], model: ServedModel, arrays: Mapping[str, np.ndarray], slices: list[slice],
    timeout_s: float,
) -> AsyncIterator[StreamedResponse]:  # fmt: skip
    """:func:`stream_responses` for an asyncio loop: the stream's thread wakes the loop."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Item] = asyncio.Queue()

    def sink(item: Item) -> None:
        loop.call_soon_threadsafe(items.put_nowait, item)

    stream = await asyncio.to_thread(_open, urls, model, arrays, slices, sink)
    complete = False
    try:
        pending = len(slices)
        while pending:
            try:
                item = await asyncio.wait_for(items.get(), timeout_s)
            except asyncio.TimeoutError:
                raise all_replicas_failed(model.name, {stream.url: TimeoutError(f"no response for {timeout_s} s")}) from None
            response, final = stream.response(item)
            pending -= final
            if response is not None:
                yield response
        complete = True
    finally:
        await asyncio.to_thread(stream.close, not complete)
