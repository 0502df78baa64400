"""Triton control and inference through tritonclient, one method per server operation.

:class:`TritonServer` wraps one server (HTTP or gRPC); :class:`TritonCluster` fans the
control operations out to every replica that reads the same model repository::

    cluster = TritonCluster(["http://t1:8000", "http://t2:8000"])
    cluster.load_model("fraud", timeout_s=300)        # POST /v2/repository/models/fraud/load
    cluster.wait_until_ready("fraud", version=3, timeout_s=60)

Every failure is raised as a :class:`~mlflow_triton.fleet.errors.TritonError` (an
``MlflowException``; the types live in :mod:`mlflow_triton.fleet.errors`) naming the server,
the model and Triton's own error text. Its type says what happened, decided from the exception
tritonclient raised and its status, never from the text:

* :class:`ReplicaUnreachable` (TEMPORARILY_UNAVAILABLE): no answer from Triton at all. The HTTP
  client raises the socket's own error (``ConnectionRefusedError``, ``TimeoutError``,
  ``socket.gaierror``: all ``OSError``) or geventhttpclient's ``HTTPConnectionClosed`` (an
  ``http.client.HTTPException``); a gateway in front of Triton answers 502/504. The gRPC client
  raises ``InferenceServerException`` with status ``StatusCode.UNAVAILABLE`` or
  ``StatusCode.DEADLINE_EXCEEDED``; Triton itself also answers UNAVAILABLE ("server not
  ready", e.g. when it could not reach its repository at start-up), so an UNAVAILABLE is
  unreachable only if the liveness RPC gets no answer either.
* :class:`ModelNotFound` (RESOURCE_DOES_NOT_EXIST): Triton answered HTTP 404 / gRPC NOT_FOUND.
* :class:`TritonError` (INTERNAL_ERROR): Triton answered with any other error, for instance
  500 / INTERNAL for a load that could not read the repository (S3 down, unknown model, broken
  config.pbtxt), 400 / INVALID_ARGUMENT for a model that failed to initialise, 503 / UNAVAILABLE
  "Server not ready".

Credentials in a URL (``http://user:pass@triton:8000``, for a proxy in front of Triton) are
sent as HTTP basic auth through tritonclient's ``BasicAuth`` plugin, never put on the wire
as part of the address, and every message names the replica with them masked
(:func:`mlflow_triton.core.masking.mask_secrets`).

The HTTP client runs on gevent: :mod:`mlflow_triton.fleet.gevent_hubs` destroys the hub it
creates in each thread when the thread's last client closes (no descriptor leak per call).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence
from urllib.parse import unquote, urlparse

import numpy as np
from mlflow.exceptions import MlflowException

from mlflow_triton.core.masking import mask_secrets
from mlflow_triton.fleet.errors import (
    GRPC_UNAVAILABLE,
    ReplicaUnreachable,
    TritonError,
    classify,
    is_missing,
    raise_failures,
    triton_status,
)
from mlflow_triton.fleet.gevent_hubs import ThreadHubs

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
#: How long the liveness RPC that settles an ambiguous gRPC UNAVAILABLE may take.
PROBE_TIMEOUT_S = 5.0

class TritonServer:
    """One Triton server. Not thread-safe: use one instance per thread (tritonclient's rule),
    and close it (or use it as a context manager) in the thread that opened it.

    Args:
        url: ``http://host:port``, ``https://host:port`` or ``grpc://host:port``; userinfo
            (``http://user:pass@host:port``) is sent as HTTP basic auth.
        protocol: ``http`` or ``grpc``; a ``grpc://`` URL forces gRPC.
        timeout_s: network timeout of control calls (a load blocks until the model is loaded).
    """

    def __init__(self, url: str, protocol: str = "http", timeout_s: float = DEFAULT_TIMEOUT_S):
        parsed = urlparse(url)
        self.url = url
        #: The URL as messages show it: credentials masked.
        self.display_url = mask_secrets(url)
        self.protocol = "grpc" if parsed.scheme == "grpc" else protocol
        self.timeout_s = timeout_s
        self._closed = False
        userinfo, _, address = parsed.netloc.rpartition("@")
        if self.protocol == "grpc":
            import tritonclient.grpc as grpcclient
            from tritonclient.grpc.auth import BasicAuth

            if parsed.scheme != "grpc":
                raise MlflowException.invalid_parameter_value(
                    f"protocol=grpc needs a grpc://host:port Triton URL, got {self.display_url!r}."
                )
            self._module = grpcclient
            self.client = grpcclient.InferenceServerClient(address, ssl=False)
        else:
            import tritonclient.http as httpclient
            from tritonclient.http.auth import BasicAuth

            self._module = httpclient
            ThreadHubs.enter()
            try:
                self.client = httpclient.InferenceServerClient(
                    address, ssl=parsed.scheme == "https", connection_timeout=10.0,
                    network_timeout=timeout_s,
                )  # fmt: skip
            except BaseException:
                ThreadHubs.leave()
                raise
        if userinfo:
            user, _, password = userinfo.partition(":")
            self.client.register_plugin(BasicAuth(unquote(user), unquote(password)))

    def _error(self, action: str, err: Exception) -> TritonError:
        """The typed error for ``err`` raised by tritonclient while doing ``action``."""
        kind = classify(err)
        status = triton_status(err)
        if kind is ReplicaUnreachable and status == GRPC_UNAVAILABLE and self._answers():
            kind = TritonError  # Triton itself said UNAVAILABLE (not ready, exiting)
        text = err.message() if callable(getattr(err, "message", None)) else str(err)
        text = text or type(err).__name__
        if kind is ReplicaUnreachable:
            return ReplicaUnreachable(
                f"Triton at {self.display_url} is unreachable ({action}): {text}. "
                "Check the target URI / TRITON_URL and that the server runs with "
                "--model-control-mode=explicit.",
                self.url, status,
            )  # fmt: skip
        return kind(f"Triton at {self.display_url} failed to {action}: {text}", self.url, status)

    def _answers(self) -> bool:
        """Whether the replica answers the liveness call at all (live or not)."""
        try:
            if self.protocol == "grpc":
                self.client.is_server_live(client_timeout=min(PROBE_TIMEOUT_S, self.timeout_s))
            else:
                self.client.is_server_live()
            return True
        except Exception:
            return False

    def _call(self, action: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # tritonclient raises InferenceServerException and socket errors
            raise self._error(action, err) from err

    def is_live(self) -> bool:
        try:
            return bool(self.client.is_server_live())
        except Exception:
            return False

    def load_model(self, name: str) -> None:
        """Load (or reload) ``name`` from the repository; blocks until Triton has tried."""
        self._call(f"load model {name!r}", self.client.load_model, name)
        logger.info("Triton %s loaded %s", self.display_url, name)

    def unload_model(self, name: str) -> None:
        self._call(f"unload model {name!r}", self.client.unload_model, name)
        logger.info("Triton %s unloaded %s", self.display_url, name)

    def is_model_ready(self, name: str, version: int | str = "") -> bool:
        return bool(self._call(f"query model {name!r}", self.client.is_model_ready, name, str(version)))

    def wait_until_ready(self, name: str, version: int | str = "", timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_model_ready(name, version):
            if time.monotonic() > deadline:
                raise TritonError(
                    f"Model {name!r} version {version or 'latest'} is not READY on {self.display_url} "
                    f"after {timeout_s}s: {self.model_state(name, version)}",
                    self.url,
                )
            time.sleep(0.2)

    def repository_index(self) -> list[dict[str, Any]]:
        """Triton's view of the repository: ``[{name, version, state, reason}]``."""
        if self.protocol == "grpc":
            index = self._call("read the repository index", self.client.get_model_repository_index, as_json=True)
            return list(index.get("models", []))
        return list(self._call("read the repository index", self.client.get_model_repository_index))

    def loaded_models(self) -> set[tuple[str, str]]:
        """``{(name, version)}`` of the model versions loaded here, from one statistics call
        (``GET /v2/models/stats``). Triton answers it from the models it holds; the repository
        index instead polls the repository (on S3, one listing and one HEAD per model folder:
        32 s over 1,000 folders in ``benchmarks/sync.py``, even with ``ready: true``)."""
        if self.protocol == "grpc":
            stats = self._call("read model statistics", self.client.get_inference_statistics, as_json=True)
        else:
            stats = self._call("read model statistics", self.client.get_inference_statistics)
        return {(entry.get("name"), str(entry.get("version"))) for entry in stats.get("model_stats", [])}

    def model_state(self, name: str, version: int | str = "") -> str:
        for entry in self.repository_index():
            if entry.get("name") == name and (not version or str(entry.get("version")) == str(version)):
                reason = entry.get("reason")
                return f"{entry.get('state', 'UNKNOWN')}{f' ({reason})' if reason else ''}"
        return "not in the repository index"

    def model_config(self, name: str) -> dict[str, Any]:
        if self.protocol == "grpc":
            return self._call(f"read config of {name!r}", self.client.get_model_config, name, as_json=True)["config"]
        return self._call(f"read config of {name!r}", self.client.get_model_config, name)

    def infer(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        datatypes: Mapping[str, str],
        outputs: Sequence[str],
        version: int | str = "",
    ) -> dict[str, np.ndarray]:
        """Run one inference; ``datatypes`` maps input names to protocol types (``FP32``...)."""
        requests = []
        for tensor_name, array in inputs.items():
            infer_input = self._module.InferInput(tensor_name, list(array.shape), datatypes[tensor_name])
            infer_input.set_data_from_numpy(array)
            requests.append(infer_input)
        requested = [self._module.InferRequestedOutput(out) for out in outputs]
        result = self._call(
            f"run inference on {name!r}", self.client.infer, name, requests,
            model_version=str(version), outputs=requested,
        )  # fmt: skip
        return {out: result.as_numpy(out) for out in outputs}

    def close(self) -> None:
        """Close the client (idempotent); in HTTP mode, also the thread's gevent hub if this
        was the thread's last client (:class:`ThreadHubs`)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.client.close()
        finally:
            if self.protocol == "http":
                ThreadHubs.leave()

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TritonCluster:
    """Replicas fed by one model repository: control calls go to all of them in parallel."""

    def __init__(self, urls: Sequence[str], protocol: str = "http", timeout_s: float = DEFAULT_TIMEOUT_S):
        if not urls:
            raise MlflowException.invalid_parameter_value("At least one Triton URL is required.")
        self.urls = list(urls)
        self.protocol = protocol
        self.timeout_s = timeout_s

    def server(self, url: str | None = None) -> TritonServer:
        return TritonServer(url or self.urls[0], self.protocol, self.timeout_s)

    def _each(self, fn, urls: Sequence[str] | None = None) -> dict[str, Exception | None]:
        """Run ``fn(server)`` on every replica; returns ``{url: error or None}``."""

        def run(url: str) -> Exception | None:
            try:
                with self.server(url) as server:
                    fn(server)
                return None
            except Exception as err:
                return err

        urls = list(urls or self.urls)
        with ThreadPoolExecutor(max_workers=len(urls)) as pool:
            return dict(zip(urls, pool.map(run, urls), strict=True))

    def load_model(self, name: str, version: int | None = None, urls: Sequence[str] | None = None) -> dict[str, Exception | None]:
        """Load ``name`` everywhere and wait for ``version`` READY; returns errors per URL."""

        def load(server: TritonServer) -> None:
            server.load_model(name)
            if version is not None:
                server.wait_until_ready(name, version, timeout_s=self.timeout_s)

        return self._each(load, urls)

    def not_ready(
        self, name: str, version: int, known_ready: Mapping[str, set[tuple[str, str]]] | None = None
    ) -> list[str]:
        """URLs of the replicas on which ``name`` ``version`` is not READY.

        Args:
            known_ready: a :meth:`ready_models` snapshot; replicas it lists READY are not asked.
        """
        missing = []
        for url in self.urls:
            if known_ready is not None and (name, str(version)) in known_ready.get(url, set()):
                continue
            with self.server(url) as server:
                if not server.is_model_ready(name, version):
                    missing.append(url)
        return missing

    def ready_models(self) -> dict[str, set[tuple[str, str]]]:
        """``{url: {(model, version) loaded}}`` from one statistics call per replica
        (:meth:`TritonServer.loaded_models`: its cost does not grow with the repository, the
        repository index's does). Replicas that fail to answer are left out: :meth:`not_ready`
        asks them per model."""
        result: dict[str, set[tuple[str, str]]] = {}

        def loaded(server: TritonServer) -> None:
            result[server.url] = server.loaded_models()

        self._each(loaded)
        return result

    def not_live(self) -> list[str]:
        """URLs of the replicas that do not answer the liveness probe."""
        down = []
        for url in self.urls:
            with self.server(url) as server:
                if not server.is_live():
                    down.append(url)
        return down

    def unload_model(self, name: str, ignore_missing: bool = True, urls: Sequence[str] | None = None) -> None:
        """Unload ``name`` on ``urls`` (default: every replica); raise listing the failures."""
        errors = self._each(lambda server: server.unload_model(name), urls)
        failures = {
            url: err for url, err in errors.items()
            if err is not None and not (ignore_missing and is_missing(err))
        }  # fmt: skip
        raise_failures(f"unload {name!r}", failures)

    def repository_index(self) -> dict[str, list[dict[str, Any]] | Exception]:
        result: dict[str, Any] = {}

        def index(server: TritonServer) -> None:
            result[server.url] = server.repository_index()

        for url, err in self._each(index).items():
            if err is not None:
                result[url] = err
        return result
