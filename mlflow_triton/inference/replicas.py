"""One asyncio connection per Triton replica, over HTTP or gRPC.

tritonclient's asyncio clients (``tritonclient.http.aio`` on aiohttp, ``tritonclient.grpc.aio``
on grpc.aio) keep many requests in flight on one connection pool or channel; its synchronous
HTTP client is not thread-safe and holds one request at a time. A :class:`Replica` wraps one
of them with the four calls predict needs. The URL's scheme chooses: ``grpc://`` is gRPC,
``http://`` and ``https://`` are HTTP.

A replica is created inside the event loop that will use it (aiohttp binds its session to
the running loop) and must be closed there (:meth:`Replica.close`).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol
from urllib.parse import urlparse

import numpy as np

from mlflow_triton.inference.errors import is_replica_failure
from mlflow_triton.inference.served import ServedModel

#: Connections an HTTP replica opens at most (aiohttp's pool); requests beyond wait for one.
DEFAULT_MAX_CONNECTIONS = 256


class Replica(Protocol):
    """What the predictor needs from one replica (fakes in the unit tests implement it too)."""

    url: str
    protocol: str

    async def is_model_ready(self, name: str) -> bool: ...

    async def model_config(self, name: str) -> dict[str, Any]: ...

    async def infer(self, model: ServedModel, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    async def close(self) -> None: ...


class _TritonReplica:
    """The shared half: building requests and reading results is the same in both clients."""

    protocol = "http"

    def __init__(self, url: str, client: Any, module: Any, timeout_s: float) -> None:
        self.url = url
        self.client = client
        self._module = module
        self.timeout_s = timeout_s

    async def is_model_ready(self, name: str) -> bool:
        """Whether ``name`` is READY here. A replica failure raises; any other error (Triton
        answering that it does not know the model) is "not ready"."""
        try:
            return bool(await self._ready(name))
        except Exception as err:  # tritonclient raises InferenceServerException and socket errors
            if is_replica_failure(err):
                raise
            return False

    async def _ready(self, name: str) -> bool:
        return await self.client.is_model_ready(name)

    async def infer(self, model: ServedModel, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request; ``inputs`` are keyed by Triton name and already checked."""
        requests = []
        for tensor in model.inputs:
            array = inputs[tensor.triton_name]
            request = self._module.InferInput(tensor.triton_name, list(array.shape), tensor.datatype)
            request.set_data_from_numpy(array)
            requests.append(request)
        wanted = [self._module.InferRequestedOutput(t.triton_name) for t in model.outputs]
        result = await self._infer(model.name, requests, wanted)
        return {t.triton_name: result.as_numpy(t.triton_name) for t in model.outputs}

    async def _infer(self, name: str, requests: list, wanted: list) -> Any:
        return await self.client.infer(name, requests, outputs=wanted)

    async def close(self) -> None:
        await self.client.close()


class HttpReplica(_TritonReplica):
    """A replica over ``tritonclient.http.aio`` (binary tensor data, aiohttp connection pool)."""

    protocol = "http"

    def __init__(self, url: str, timeout_s: float, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        import tritonclient.http.aio as aio

        parsed = urlparse(url)
        client = aio.InferenceServerClient(
            parsed.netloc, conn_limit=max_connections, conn_timeout=timeout_s,
            ssl=parsed.scheme == "https",
        )  # fmt: skip
        super().__init__(url, client, aio, timeout_s)

    async def model_config(self, name: str) -> dict[str, Any]:
        return dict(await self.client.get_model_config(name))


class GrpcReplica(_TritonReplica):
    """A replica over ``tritonclient.grpc.aio`` (one HTTP/2 channel, messages up to 2 GiB)."""

    protocol = "grpc"

    def __init__(self, url: str, timeout_s: float) -> None:
        import tritonclient.grpc.aio as aio

        super().__init__(url, aio.InferenceServerClient(urlparse(url).netloc), aio, timeout_s)

    async def _ready(self, name: str) -> bool:
        return await self.client.is_model_ready(name, client_timeout=self.timeout_s)

    async def model_config(self, name: str) -> dict[str, Any]:
        answer = await self.client.get_model_config(name, as_json=True, client_timeout=self.timeout_s)
        return dict(answer["config"])

    async def _infer(self, name: str, requests: list, wanted: list) -> Any:
        return await self.client.infer(name, requests, outputs=wanted, client_timeout=self.timeout_s)


def connect(url: str, timeout_s: float, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Replica:
    """The replica at ``url`` (``grpc://`` -> gRPC, else HTTP); call inside the event loop."""
    if urlparse(url).scheme == "grpc":
        return GrpcReplica(url, timeout_s)
    return HttpReplica(url, timeout_s, max_connections)


def protocol_of(url: str) -> str:
    """``grpc`` or ``http`` for a replica URL."""
    return "grpc" if urlparse(url).scheme == "grpc" else "http"
