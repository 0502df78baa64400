"""The asyncio predictor: any number of rows, concurrently over every READY replica, with failover.

:class:`AsyncTritonPredictor` is what an asyncio application keeps for its lifetime::

    async with AsyncTritonPredictor("triton:/http://t1:8000,http://t2:8000") as predictor:
        outputs = await predictor.predict("fraud", {"features": x})   # {"scores": ndarray}

Each :meth:`~AsyncTritonPredictor.predict` call:

1. resolves the target's replicas (``dns+``/``k8s://`` URLs again at every call) and asks each
   whether the model is READY; reads the served config from one of them
   (:class:`~mlflow_triton.inference.served.ServedModel`);
2. checks the inputs against that config before anything is sent
   (:mod:`~mlflow_triton.inference.layouts`);
3. splits the rows into requests of at most ``max_batch_size`` rows and the request size
   limit (:mod:`~mlflow_triton.inference.splitting`);
4. keeps ``concurrency`` requests in flight on every READY replica (default: Triton's
   optimization guide's 2 x max_batch_size x instance count, per replica); a replica that
   fails (refused, reset, 5xx, timeout) is left out for the rest of the call and its requests
   go to the others; a request Triton refuses (4xx) ends the call at once;
5. joins the answers in input order, as one large request would have returned them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Callable, Sequence

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_triton.fleet.discovery import is_discovery_url, resolve_urls
from mlflow_triton.inference.dispatch import Dispatch
from mlflow_triton.inference.errors import all_replicas_failed, is_replica_failure, request_error
from mlflow_triton.inference.layouts import input_arrays
from mlflow_triton.inference.options import PredictSettings
from mlflow_triton.inference.replicas import Replica, connect, protocol_of
from mlflow_triton.inference.served import ServedModel
from mlflow_triton.inference.splitting import default_request_bytes, plan_requests, reassemble
from mlflow_triton.inference.streaming import (
    StreamedResponse,
    StreamPlan,
    astream_responses,
    check_streamable,
)
from mlflow_triton.settings.target import parse_target_uri

logger = logging.getLogger(__name__)

#: ``connect(url, settings)`` -> a :class:`~mlflow_triton.inference.replicas.Replica`.
Connector = Callable[[str, PredictSettings], Replica]


def _default_connector(url: str, settings: PredictSettings) -> Replica:
    return connect(url, settings.request_timeout_s, settings.max_connections)


def target_urls(target: str | Sequence[str]) -> list[str]:
    """The URLs of a target: ``triton``, ``triton:/URL[,URL]``, one URL, or a list of URLs.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for a malformed target or URL.
    """
    if isinstance(target, str):
        return parse_target_uri(target if target.startswith("triton") else f"triton:/{target}")
    return parse_target_uri("triton:/" + ",".join(target))


class AsyncTritonPredictor:
    """Predicts through every Triton replica of a target, from one asyncio event loop.

    Connections stay open across calls (close with :meth:`close` or ``async with``). Safe to
    call concurrently from many coroutines of its loop; not from several loops or threads (use
    :class:`~mlflow_triton.inference.blocking.TritonPredictor` there).

    Args:
        target: ``"triton"`` (``TRITON_URL``), ``"triton:/http://t1:8000,http://t2:8000"``, a
            URL or a list of URLs; ``grpc://`` URLs use gRPC, ``dns+http://`` URLs stand for
            every address of a name.
        connector: ``connector(url, settings)`` -> replica (tests inject fakes).
        **settings: :class:`PredictSettings` fields (``concurrency``, ``request_timeout_s``...).

    Example::

        predictor = AsyncTritonPredictor("triton:/grpc://t1:8001,grpc://t2:8001", concurrency=64)
        outputs = await predictor.predict("fraud", {"features": x})
        await predictor.close()
    """

    def __init__(self, target: str | Sequence[str] = "triton", *, connector: Connector | None = None, **settings: Any) -> None:
        self.urls = target_urls(target)
        self.settings = PredictSettings(**settings)
        self._connector = connector or _default_connector
        self._replicas: dict[str, Replica] = {}

    async def __aenter__(self) -> "AsyncTritonPredictor":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection; a later call opens new ones."""
        replicas, self._replicas = list(self._replicas.values()), {}
        await asyncio.gather(*(r.close() for r in replicas), return_exceptions=True)

    async def _current(self) -> list[Replica]:
        """A replica per URL the target resolves to now; connections to URLs gone are closed."""
        if any(is_discovery_url(u) for u in self.urls):
            urls = await asyncio.to_thread(resolve_urls, self.urls)  # DNS / Kubernetes API calls
        else:
            urls = self.urls
        for url in set(self._replicas) - set(urls):
            await self._replicas.pop(url).close()
        for url in urls:
            if url not in self._replicas:
                self._replicas[url] = self._connector(url, self.settings)
        return [self._replicas[u] for u in urls]

    async def serving(self, name: str) -> tuple[ServedModel, list[Replica]]:
        """The served config of ``name`` and the replicas where it is READY.

        Raises:
            MlflowException: TEMPORARILY_UNAVAILABLE when no replica answers;
                RESOURCE_DOES_NOT_EXIST when none has ``name`` READY.
        """
        replicas = await self._current()
        timeout = self.settings.request_timeout_s
        answers = await asyncio.gather(
            *(asyncio.wait_for(r.is_model_ready(name), timeout) for r in replicas), return_exceptions=True
        )
        failures = {r.url: a for r, a in zip(replicas, answers, strict=True) if isinstance(a, BaseException)}
        ready = [r for r, a in zip(replicas, answers, strict=True) if a is True]
        for replica in ready:
            try:
                config = await asyncio.wait_for(replica.model_config(name), timeout)
            except Exception as err:  # tritonclient errors, socket errors, timeouts
                if not is_replica_failure(err):
                    raise request_error(err, replica.url, name) from err
                failures[replica.url] = err
                continue
            return ServedModel.from_config(name, config), [r for r in ready if r.url not in failures]
        if ready or len(failures) == len(replicas):  # READY somewhere, but no answer now
            raise all_replicas_failed(name, failures)
        unreachable = f" Unreachable: {', '.join(failures)}." if failures else ""
        raise MlflowException(
            f"Model {name!r} is not READY on any Triton replica ({', '.join(r.url for r in replicas)})."
            f"{unreachable} Check the name (mlflow deployments list -t triton) or deploy it "
            "(mlflow deployments create -t triton ...).",
            error_code=RESOURCE_DOES_NOT_EXIST,
        )

    async def predict(self, name: str, inputs: Any) -> dict[str, np.ndarray]:
        """Run ``inputs`` (any number of rows) through model ``name``.

        Args:
            name: the deployment (Triton model) name.
            inputs: a dict of arrays keyed by input name, an array (single input) or a pandas
                DataFrame (:mod:`~mlflow_triton.inference.layouts` lists the layouts).

        Returns:
            ``{output_name: ndarray}`` keyed by the MLflow names, rows in input order.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE for inputs the served config does not
                accept (named, with the expected shape and dtype) or a request Triton refused;
                RESOURCE_DOES_NOT_EXIST for a model READY nowhere; TEMPORARILY_UNAVAILABLE
                when every replica failed; INTERNAL_ERROR when the model failed everywhere.
        """
        model, replicas = await self.serving(name)
        if model.decoupled:
            raise MlflowException.invalid_parameter_value(
                f"Model {name!r} is decoupled (any number of responses per request): use "
                "predict_stream (gRPC streaming) instead of predict."
            )
        arrays = input_arrays(inputs, model)
        if model.batched and next(iter(arrays.values())).shape[0] == 0:
            raise MlflowException.invalid_parameter_value(f"No rows to predict for {name!r}.")
        slices = plan_requests(arrays, model.max_batch_size, self.request_bytes(replicas))
        parts = await Dispatch(model, arrays, slices, replicas, self.concurrency(model), self.settings).run()
        joined = reassemble(parts, [t.triton_name for t in model.outputs])
        return {t.mlflow_name: joined[t.triton_name] for t in model.outputs}

    async def stream(self, name: str, inputs: Any) -> AsyncIterator[StreamedResponse]:
        """Yield each response of a decoupled model ``name`` as it arrives (gRPC streaming).

        The inputs are checked and split as for :meth:`predict`; every request goes out on one
        stream to the first READY ``grpc://`` replica that opens one.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE without a ``grpc://`` replica or for
                inputs the config does not accept; the errors of :meth:`predict` otherwise.
        """
        plan = await self.stream_plan(name, inputs)
        async for response in astream_responses(*plan, self.settings.request_timeout_s):
            yield response

    async def stream_plan(self, name: str, inputs: Any) -> StreamPlan:
        """``(grpc urls, model, arrays, slices)`` of a stream: READY gRPC replicas, checked
        inputs and their requests (gRPC's message limit unless ``max_request_bytes``)."""
        model, replicas = await self.serving(name)
        urls = check_streamable(model, [r.url for r in replicas])
        arrays = input_arrays(inputs, model)
        limit = self.settings.max_request_bytes or default_request_bytes("grpc")
        return urls, model, arrays, plan_requests(arrays, model.max_batch_size, limit)

    def request_bytes(self, replicas: Sequence[Replica]) -> int:
        """Tensor bytes per request: the setting, else the tightest protocol limit."""
        if self.settings.max_request_bytes:
            return self.settings.max_request_bytes
        return min(default_request_bytes(protocol_of(r.url)) for r in replicas)

    def concurrency(self, model: ServedModel) -> int:
        """Requests in flight per replica: the setting, else 2 x max_batch_size x instances."""
        return self.settings.concurrency or 2 * max(model.max_batch_size, 1) * model.instance_count


