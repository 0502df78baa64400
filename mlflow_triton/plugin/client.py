"""The ``triton`` MLflow deployment target.

MLflow's plugin contract (``mlflow.deployments.base``): one ``BaseDeploymentClient`` subclass
plus module-level ``run_local`` and ``target_help``. ``create_deployment`` and
``update_deployment`` block until every Triton replica reports the new version READY;
``delete_deployment`` is idempotent; returned dicts carry ``name``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_triton.flavors.model_source import resolve_model
from mlflow_triton.flavors.triton_source import publish_composing_models, restore_composing_models
from mlflow_triton.fleet.discovery import resolve_urls
from mlflow_triton.fleet.server import ReplicaUnreachable, TritonCluster
from mlflow_triton.inference import TritonPredictor
from mlflow_triton.inference.responses import predictions_response
from mlflow_triton.plugin.triton_view import describe_from_triton, list_from_triton, replica_states
from mlflow_triton.repository.lease import LeaseLost
from mlflow_triton.rollout.publisher import ModelPublisher
from mlflow_triton.rollout.repair import previous_good
from mlflow_triton.rollout.verification import SmokeTest
from mlflow_triton.settings.deployment import (
    DeploymentConfig,
    parse_target_uri,
    target_options,
    validate_model_name,
)

logger = logging.getLogger(__name__)


class TritonDeploymentClient(BaseDeploymentClient):
    """Deploys MLflow models (ONNX or TorchScript) to NVIDIA Triton through a model repository.

    Args:
        target_uri: ``triton`` (servers from ``TRITON_URL``, default ``http://localhost:8000``)
            or ``triton:/http://host:port[,http://host2:port]`` for several replicas that read
            the same repository; ``dns+http://name:port`` stands for every address of
            ``name``, looked up at each call (:mod:`mlflow_triton.fleet.discovery`). A query
            ``?repository=s3://bucket/prefix`` gives ``list``/``get`` the repository.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for a malformed target URI.
    """

    def __init__(self, target_uri: str) -> None:
        super().__init__(target_uri)
        self.triton_urls = parse_target_uri(target_uri)
        # Options of the target URI's query (?repository=...), defaults of every call.
        self._target_options: dict[str, str] = target_options(target_uri)
        # The repository of this client's last successful create/update, for the calls made
        # without a config (MLflow's list and get take none).
        self._last_repository: dict[str, str] = {}
        self._inference: TritonPredictor | None = None
        self._predictor_lock = threading.Lock()

    # -- helpers -----------------------------------------------------------------------------
    def _config(self, config: Mapping[str, Any] | None) -> DeploymentConfig:
        given = dict(config) if config else dict(self._last_repository)
        return DeploymentConfig.from_dict({**self._target_options, **given})

    def _remember_repository(self, settings: DeploymentConfig) -> None:
        self._last_repository = {
            "model_repository": settings.require_repository(),
            **({"s3_endpoint_url": settings.s3_endpoint_url} if settings.s3_endpoint_url else {}),
        }

    def replica_urls(self) -> list[str]:
        """The replicas now: the target's URLs, each ``dns+`` name resolved again."""
        return resolve_urls(self.triton_urls)

    def _publisher(self, config: DeploymentConfig) -> ModelPublisher:
        return ModelPublisher.for_config(config, self.replica_urls(), target=self.target_uri)

    def _describe(self, publisher: ModelPublisher, name: str) -> dict[str, Any]:
        state = publisher.read_state(name)
        if not state.exists:
            raise MlflowException(
                f"No deployment named {name!r} in {publisher.store.uri}.",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
        servers = replica_states(publisher.cluster.repository_index(), name)
        provenance = dict(state.provenance or {})
        provenance.pop("config_pbtxt", None)
        history = publisher.read_history(name)
        return {
            "name": name,
            "serving_version": state.serving_version,
            "versions": state.versions,
            "repository": publisher.store.url(f"{name}/"),
            "flavor": provenance.get("flavor"),
            "model_uri": provenance.get("model_uri"),
            "provenance": provenance,
            "servers": servers,
            "rollback_target": previous_good(state, history),
            "history": history.to_list(),
            "source": "repository",
        }

    # -- the plugin contract -----------------------------------------------------------------
    def create_deployment(
        self, name: str, model_uri: str, flavor: str | None = None,
        config: Mapping[str, Any] | None = None, endpoint: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Publish ``model_uri`` as model ``name`` and wait until Triton serves it.

        Config keys (``-C key=value``; defaults in parentheses):
            model_repository (env TRITON_MODEL_REPO): ``s3://bucket/prefix`` or a directory.
            s3_endpoint_url (boto3 default, honours AWS_ENDPOINT_URL_S3): MinIO/moto endpoint.
            flavor (ONNX, else TorchScript, else triton, else python_function): ``onnx``,
                ``torchscript``, ``triton`` or ``python_function`` (``pyfunc``).
            python_env (the server's): a packed environment ``.tar.gz`` for pyfunc models.
            max_batch_size (32): 0 disables batching.
            dynamic_batching (true), preferred_batch_size (none), max_queue_delay_microseconds (200).
            instance_kind (gpu): ``gpu``, ``cpu`` or ``auto``; instance_count (1).
            keep_versions (2): published versions kept, the serving one included.
            wait_ready_timeout (300): seconds to wait for READY on every replica.
            protocol (http): ``http`` or ``grpc`` (with ``grpc://`` URLs).
            verify (true): before any client sees the version, load it under a staging name
                on every replica and compare a smoke inference with the model run locally.
            lease_wait (120): seconds to wait while another publisher holds the lease.
            lease_ttl (30): seconds after which a dead publisher's lease expires.

        Returns:
            ``{"name", "version", "flavor", "model_uri", "repository", "triton_urls", ...}``

        Raises:
            MlflowException: RESOURCE_ALREADY_EXISTS if ``name`` exists; INVALID_PARAMETER_VALUE
                for bad names, URIs or config; INTERNAL_ERROR when S3 or Triton fail.

        Example::

            client = mlflow.deployments.get_deploy_client("triton:/http://localhost:8000")
            client.create_deployment("fraud", "models:/fraud@production",
                                     config={"model_repository": "s3://models/triton"})

            $ mlflow deployments create -t triton --name fraud -m models:/fraud@production \\
                -C model_repository=s3://models/triton -C instance_kind=gpu
        """
        return self._publish(name, model_uri, flavor, config, mode="create")

    def update_deployment(
        self, name: str, model_uri: str | None = None, flavor: str | None = None,
        config: Mapping[str, Any] | None = None, endpoint: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Publish a new version of ``name``; the old one serves until the new one is READY.

        Without ``model_uri`` the serving model is republished with the new ``config``.
        Publishing the version that already serves uploads nothing. Versions beyond
        ``keep_versions`` are pruned. Same config keys as :meth:`create_deployment`.
        """
        if model_uri is None:
            publisher = self._publisher(self._config(config))
            state = publisher.read_state(name)
            if not state.exists or not state.provenance:
                raise MlflowException(
                    f"No deployment named {name!r} to update; pass --model-uri or create it.",
                    error_code=RESOURCE_DOES_NOT_EXIST,
                )
            # The same registry version, not the alias re-resolved: an update without a
            # model URI changes settings, never the model.
            registered = state.provenance.get("registered_model"), state.provenance.get("registered_version")
            model_uri = f"models:/{registered[0]}/{registered[1]}" if all(registered) else state.provenance["model_uri"]
            flavor = flavor or state.provenance.get("flavor")
        return self._publish(name, model_uri, flavor, config, mode="update")

    def _publish(self, name, model_uri, flavor, config, mode) -> dict[str, Any]:
        validate_model_name(name)
        settings = self._config(config)
        source = resolve_model(model_uri, flavor or settings.flavor)
        publisher = self._publisher(settings)
        verify = SmokeTest.for_source(publisher.store, publisher.cluster, source) if settings.verify else None
        started = time.monotonic()
        composing = []
        if source.flavor == "triton":  # an ensemble's logged steps go first, each verified
            composing = publish_composing_models(
                publisher, source,
                lambda: SmokeTest(publisher.store, publisher.cluster, "triton") if settings.verify else None,
            )  # fmt: skip
        try:
            result = publisher.publish(name, source, mode=mode, verify=verify)
        except (ReplicaUnreachable, LeaseLost):
            raise  # the config may pin the new ensemble already: the rerun it asks for finishes it
        except MlflowException as err:  # the ensemble does not serve: neither do its new steps
            restored = restore_composing_models(publisher, composing)
            if not restored:
                raise
            raise MlflowException(
                f"{err.message} Composing models restored to the versions they served: "
                f"{', '.join(restored)}.",
                error_code=err.error_code,
            ) from err
        self._remember_repository(settings)
        return {
            "name": name,
            "version": result.version,
            "previous_version": result.previous_version,
            "changed": result.changed,
            "flavor": result.flavor,
            "model_uri": model_uri,
            "repository": publisher.store.url(f"{name}/"),
            "triton_urls": self.triton_urls,
            "replicas": publisher.cluster.urls,
            "bytes_uploaded": result.bytes_uploaded,
            "pruned_versions": result.pruned,
            "verified": result.verified,
            "seconds": round(time.monotonic() - started, 3),
            **({"composing_models": {r.name: r.version for r in composing}} if composing else {}),
        }

    def delete_deployment(
        self, name: str, config: Mapping[str, Any] | None = None, endpoint: str | None = None
    ) -> None:
        """Unload ``name`` from every replica and remove it from the repository (idempotent)."""
        self._publisher(self._config(config)).delete(name)

    def list_deployments(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Deployments with their serving version.

        With a repository (``?repository=`` on the target URI, ``TRITON_MODEL_REPO``, or the
        one of this client's last create/update): the repository's deployments and the
        registry version each serves. Without: every model in the replicas' repository index,
        with its state per replica (``"source": "triton"``).
        """
        settings = self._config(None)
        if not settings.model_repository:
            return list_from_triton(TritonCluster(self.replica_urls(), settings.protocol))
        publisher = self._publisher(settings)
        return [
            {
                "name": s.name, "serving_version": s.serving_version, "versions": s.versions,
                "registered_model": (s.provenance or {}).get("registered_model"),
                "registered_version": (s.provenance or {}).get("registered_version"),
                "source": "repository",
            }
            for s in publisher.deployments()
        ]  # fmt: skip

    def get_deployment(self, name: str, endpoint: str | None = None) -> dict[str, Any]:
        """State of ``name`` on each replica (Triton's reason for a failed load), plus, with a
        repository configured (see :meth:`list_deployments`), its provenance and history;
        without, the model config a replica serves (``"source": "triton"``)."""
        validate_model_name(name)
        settings = self._config(None)
        if not settings.model_repository:
            return describe_from_triton(TritonCluster(self.replica_urls(), settings.protocol), name)
        return self._describe(self._publisher(settings), name)

    def _predictor(self) -> TritonPredictor:
        """This client's predictor, created at the first predict: its connections (and the
        event loop thread that holds them) serve every later call."""
        with self._predictor_lock:
            if self._inference is None:
                self._inference = TritonPredictor(self.triton_urls)
            return self._inference

    def predict(
        self, deployment_name: str | None = None, inputs: Any = None, endpoint: str | None = None
    ) -> PredictionsResponse:
        """Run ``inputs`` (any number of rows) through the deployed model on every replica.

        The rows are split into requests of at most the served ``max_batch_size`` (and under
        the HTTP body / gRPC message limit), sent concurrently to every replica where the
        model is READY (2 x max_batch_size x instance count in flight per replica), and joined
        back in input order. A replica that fails is left out and its requests go to the
        others; a request Triton refuses fails the call. See :mod:`mlflow_triton.inference`.

        Args:
            inputs: a dict of arrays keyed by input name (MLflow or Triton names), one array
                (single-input models) or a pandas DataFrame: a column per input (what
                ``mlflow deployments predict --input-path`` reads from columns or records
                JSON), NVIDIA's ``{"inputs": {NAME: tensor}}``, or the columns of one 2-D input.

        Returns:
            ``PredictionsResponse({"predictions": {output_name: ndarray}})``: the served dtypes
            and shapes, rows in input order (BYTES outputs as ``bytes``); ``to_json`` writes
            lists (text as strings), which ``PredictionsResponse.from_json`` reads back.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE for inputs the served config does not
                accept (naming the input, expected shape and dtype); RESOURCE_DOES_NOT_EXIST
                when no replica has the model READY; TEMPORARILY_UNAVAILABLE when every
                replica failed.

        Example::

            $ mlflow deployments predict -t triton --name fraud --input-path rows.json \\
                --output-path predictions.json
        """
        name = validate_model_name(deployment_name)
        return predictions_response(self._predictor().predict(name, inputs))

    def predict_stream(
        self, deployment_name: str | None = None, inputs: Any = None, endpoint: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Each response of a decoupled model, as it arrives, over gRPC streaming.

        Needs ``grpc://`` replica URLs in the target (``triton:/grpc://host:8001``). The
        inputs are checked and split as for :meth:`predict`.

        Returns:
            An iterator of ``{"request": i, "predictions": {output_name: ndarray}}``;
            ``request`` is the index of the request (slice of rows) the response answers.
        """
        name = validate_model_name(deployment_name)
        responses = self._predictor().predict_stream(name, inputs)
        return ({"request": r.request, "predictions": r.outputs} for r in responses)


def run_local(*args: Any, **kwargs: Any) -> None:
    """Serve a model on an embedded local stack (moto S3 + CPU tritonserver) until Ctrl-C.

    ``mlflow deployments run-local`` calls ``run_local(name, model_uri, flavor, config)``, while
    ``mlflow.deployments.base`` documents ``run_local(target, name, model_uri, flavor, config)``;
    both forms are accepted.
    """
    kwargs.pop("target", None)
    if len(args) == 5 or (args and str(args[0]).startswith("triton:/")):
        args = args[1:]  # the documented form, target first
    _run_local(*args, **kwargs)


def _run_local(
    name: str, model_uri: str, flavor: str | None = None, config: Mapping[str, Any] | None = None
) -> None:
    import os
    import tempfile

    from mlflow_triton.local.stack import LocalStack

    workdir = Path(tempfile.mkdtemp(prefix="mlflow-triton-local-"))
    with LocalStack(workdir, with_mlflow=False) as stack:
        overrides = {"instance_kind": "cpu", **dict(config or {}), "model_repository": stack.model_repository}
        os.environ.update({k: v for k, v in stack.env.items() if k != "MLFLOW_TRACKING_URI"})
        client = TritonDeploymentClient(f"triton:/{stack.triton_urls[0]}")
        result = client.create_deployment(name, model_uri, flavor, config=overrides)
        print(f"Serving {name} version {result['version']} at {stack.triton_urls[0]} (Ctrl-C stops)")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


def target_help() -> str:
    return """\
Deploy MLflow models (ONNX or TorchScript) to NVIDIA Triton Inference Server.

Target URI: 'triton' (servers from TRITON_URL, default http://localhost:8000) or
'triton:/http://host:8000[,http://host2:8000]' (replicas sharing one model repository), or
'triton:/dns+http://headless-service:8000' (every address of the name, resolved at each call),
or 'triton:/k8s://namespace/service' (EndpointSlices; needs mlflow-triton[k8s]). Add
'?repository=s3://bucket/prefix' for list/get; without a repository they read Triton's index.
Triton must run with --model-control-mode=explicit and --model-repository pointing at the
same repository as -C model_repository (or TRITON_MODEL_REPO).

Config (-C key=value): model_repository, s3_endpoint_url,
flavor (onnx|torchscript|triton|python_function), python_env (pyfunc: packed env .tar.gz),
max_batch_size (32), dynamic_batching (true), preferred_batch_size, max_queue_delay_microseconds
(200), instance_kind (gpu|cpu|auto), instance_count (1), keep_versions (2),
wait_ready_timeout (300), protocol (http|grpc), verify (true), lease_wait (120), lease_ttl (30),
config_override (file or inline pbtxt), warmup (auto|true|false), accelerator (none|tensorrt|cuda),
precision (fp16|fp32), trt_workspace_bytes, gpus (e.g. 0,1), response_cache (false).

Every version is loaded and verified under a staging name on every replica before any
client sees it; -C verify=false skips the smoke inference (loading is still checked).

predict takes any number of rows: they are split into requests of at most the served
max_batch_size, sent concurrently to every replica where the model is READY (a failing
replica's requests go to the others) and joined in input order. --input-path JSON: a key per
input ({"features": [[...], ...]}), records, NVIDIA's {"inputs": {...}}, or the rows of a
single 2-D input. Decoupled models stream through predict_stream (grpc:// URLs).

Examples:
  mlflow deployments create -t triton --name fraud -m models:/fraud@production \\
      -C model_repository=s3://models/triton
  mlflow deployments predict -t triton --name fraud --input-path input.json \\
      --output-path predictions.json
"""
