"""The application-facing inference client: predict like an application, not like a smoke test.

* :class:`AsyncTritonPredictor` (asyncio) and :class:`TritonPredictor` (blocking, thread-safe,
  its own loop thread): any number of rows, split into requests Triton accepts
  (``max_batch_size``, the HTTP body and gRPC message limits), sent concurrently over every
  READY replica, retried on another replica when one fails, joined back in input order;
  connections kept across calls; HTTP or gRPC by the URLs' scheme.
* Streaming (``stream`` / ``predict_stream``): each response of a decoupled model as it
  arrives, over gRPC.

The MLflow plugin's ``predict`` and ``predict_stream`` are thin calls into this package::

    from mlflow_triton.inference import AsyncTritonPredictor

    async with AsyncTritonPredictor("triton:/http://t1:8000,http://t2:8000") as predictor:
        outputs = await predictor.predict("fraud", {"features": x})   # {"scores": ndarray}

Modules: :mod:`.served` (the served config), :mod:`.layouts` (input layouts and checks),
:mod:`.splitting` (requests and reassembly), :mod:`.errors` (failover or fail),
:mod:`.replicas` (asyncio HTTP/gRPC connections), :mod:`.options` (the settings),
:mod:`.dispatch` (one call's requests over the replicas), :mod:`.predictor` (the asyncio predictor),
:mod:`.blocking` (the synchronous one), :mod:`.streaming` (decoupled models),
:mod:`.responses` (MLflow's response shape).
"""

from __future__ import annotations

from mlflow_triton.inference.blocking import TritonPredictor
from mlflow_triton.inference.options import PredictSettings
from mlflow_triton.inference.predictor import AsyncTritonPredictor
from mlflow_triton.inference.streaming import StreamedResponse

__all__ = ["AsyncTritonPredictor", "PredictSettings", "StreamedResponse", "TritonPredictor"]
