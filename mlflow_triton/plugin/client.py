"""The ``triton`` MLflow deployment target.

MLflow's plugin contract (``mlflow.deployments.base``): one ``BaseDeploymentClient`` subclass
plus module-level ``run_local`` and ``target_help``. ``create_deployment`` and
``update_deployment`` block until every Triton replica reports the new version READY;
``delete_deployment`` is idempotent; returned dicts carry ``name``.

This module is where the package meets its caller (``mlflow deployments``, a notebook, a
service), so it is where credentials are masked (:mod:`mlflow_triton.core.masking`): every
public method returns its dicts masked and scrubs any exception it raises (same type, same
traceback, masked text), and the package's log records are masked whatever handlers the
host process set up.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator, Mapping

from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_triton.core.masking import install_log_masking
from mlflow_triton.flavors.registry import resolve_model
from mlflow_triton.fleet.discovery import resolve_urls
from mlflow_triton.fleet.server import TritonCluster
from mlflow_triton.inference import TritonPredictor
from mlflow_triton.inference.responses import predictions_response
from mlflow_triton.plugin.console import plugin_call
from mlflow_triton.plugin.triton_view import describe_from_triton, list_from_triton, replica_states
from mlflow_triton.repository.concurrency import concurrently
from mlflow_triton.repository.layout import validate_model_name
from mlflow_triton.rollout import interrupts
from mlflow_triton.rollout.publisher import ModelPublisher
from mlflow_triton.rollout.repair import previous_good
from mlflow_triton.settings.deployment import DeploymentConfig
from mlflow_triton.settings.target import parse_target_uri, target_options

logger = logging.getLogger(__name__)
install_log_masking()


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

    Every public method runs under :func:`~mlflow_triton.plugin.console.plugin_call`: MLflow's
    download progress bars stay off, credentials are masked in errors and descriptions, and
    under MLflow's CLI an error prints as one line.
    """

    @plugin_call
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
        # Independent S3 reads at once (a round trip of latency each on AWS).
        state, history = concurrently(lambda: publisher.read_state(name), lambda: publisher.read_history(name))
        if not state.exists:
            raise MlflowException(
                f"No deployment named {name!r} in {publisher.store.uri}.",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
        # Triton remembers every version it ever loaded under this name, also those of
        # deleted deployments: show the versions the repository holds now.
        servers = replica_states(publisher.cluster.repository_index(), name, versions=state.versions)
        provenance = state.provenance.to_dict() if state.provenance else {}
        provenance.pop("config_pbtxt", None)
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
    @plugin_call
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
            instance_kind (auto): ``auto`` (GPUs where the server has them, else CPU),
                ``gpu`` or ``cpu``; instance_count (1).
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
            Interrupted: SIGINT/SIGTERM (a ``KeyboardInterrupt`` naming the version that
                serves; see :meth:`update_deployment`).

        Example::

            client = mlflow.deployments.get_deploy_client("triton:/http://localhost:8000")
            client.create_deployment("fraud", "models:/fraud@production",
                                     config={"model_repository": "s3://models/triton"})

            $ mlflow deployments create -t triton --name fraud -m models:/fraud@production \\
                -C model_repository=s3://models/triton
        """
        return self._publish(name, model_uri, flavor, config, mode="create")

    @plugin_call
    def update_deployment(
        self, name: str, model_uri: str | None = None, flavor: str | None = None,
        config: Mapping[str, Any] | None = None, endpoint: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Publish a new version of ``name``; the old one serves until the new one is READY.

        Without ``model_uri`` the serving model is republished with the new ``config``.
        Publishing the version that already serves uploads nothing. Versions beyond
        ``keep_versions`` are pruned. Same config keys as :meth:`create_deployment`.

        Interrupted (SIGINT/SIGTERM), it stops before the switch and removes the candidate,
        or, once the switch has begun, finishes and records it; then it says which version
        serves (``mlflow deployments``: on stderr, exit status 130 for Ctrl-C; from Python:
        :class:`~mlflow_triton.rollout.interrupts.Interrupted`, a ``KeyboardInterrupt``).
        """
        return self._publish(name, model_uri, flavor, config, mode="update")

    def _publish(
        self, name: str, model_uri: str | None, flavor: str | None, config: Mapping[str, Any] | None, mode: str
    ) -> dict[str, Any]:
        """Publish under :func:`~mlflow_triton.rollout.interrupts.reported`: SIGINT/SIGTERM stop it
        before the switch (nothing changes) or after it is recorded, and leave one line saying
        which version serves (under MLflow's CLI: on stderr, exit status 130 for Ctrl-C)."""
        validate_model_name(name)
        settings = self._config(config)
        with interrupts.reported(name, serving_now=lambda: self._publisher(settings).read_state(name).serving_version):
            try:
                model_uri, flavor = self._model_to_publish(name, model_uri, flavor, settings)
                source = resolve_model(model_uri, flavor or settings.flavor)
                publisher = self._publisher(settings)
            except KeyboardInterrupt as err:  # nothing was written yet
                raise interrupts.Interrupted.of(err, name, False, known=False) from err
            started = time.monotonic()
            result = publisher.publish(name, source, mode=mode, verify=settings.verify)
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
            **({"composing_models": {r.name: r.version for r in result.composing}} if result.composing else {}),
        }

    def _model_to_publish(
        self, name: str, model_uri: str | None, flavor: str | None, settings: DeploymentConfig
    ) -> tuple[str, str | None]:
        """``model_uri`` and ``flavor``; without a model URI (an update that changes settings,
        never the model), the registry version that serves, not its alias re-resolved."""
        if model_uri is not None:
            return model_uri, flavor
        state = self._publisher(settings).read_state(name)
        if not state.exists or not state.provenance:
            raise MlflowException(
                f"No deployment named {name!r} to update; pass --model-uri or create it.",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
        return state.provenance.registry_uri, flavor or state.provenance.flavor

    @plugin_call
    def delete_deployment(
        self, name: str, config: Mapping[str, Any] | None = None, endpoint: str | None = None
    ) -> None:
        """Unload ``name`` from every replica and remove it from the repository (idempotent)."""
        self._publisher(self._config(config)).delete(name)

    @plugin_call
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
                "registered_model": s.provenance.registered_model if s.provenance else None,
                "registered_version": s.provenance.registered_version if s.provenance else None,
                "source": "repository",
            }
            for s in publisher.deployments()
        ]  # fmt: skip

    @plugin_call
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

    @plugin_call
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

    @plugin_call
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
