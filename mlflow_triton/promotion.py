"""Registry-driven promotion: an MLflow alias decides what every Triton replica serves.

A :class:`PromotionSpec` names registered models, the alias each one follows (``production``,
``champion``...), the Triton deployment it feeds and that deployment's config. :func:`sync`
reconciles once, :func:`watch` reconciles in a loop, :func:`rollback` puts back the previous
published version, and :mod:`mlflow_triton.webhooks` reconciles when MLflow reports an alias
move. The CLI (``mlflow-triton sync|watch|rollback|serve-webhooks``) calls exactly these.

A spec file (every key but ``models[].registered_model`` is optional)::

    alias: production                  # followed by every model unless it names its own
    repository: s3://models/triton     # default: TRITON_MODEL_REPO
    triton: [http://t1:8000, http://t2:8000]   # default: TRITON_URL
    config: {instance_kind: gpu}       # DeploymentConfig keys, as for `-C key=value`
    models:
      - registered_model: fraud
        deployment: fraud-detector     # Triton model name; default: the registered name
        alias: champion
        config: {max_batch_size: 8}

Python::

    spec = load_spec("promotion.yaml")                # or load_spec(models=["fraud"], ...)
    report = sync(spec)
    for model in report.models:
        print(model.describe())                       # fraud@champion: published ...
    if not report.ok:
        raise SystemExit(1)

Shell::

    mlflow-triton sync --alias production --model fraud --repo s3://models/triton \\
        --triton http://t1:8000,http://t2:8000 -C instance_kind=gpu

How one model is reconciled:

1. The alias is resolved to a registry version (``get_model_version_by_alias``).
2. The provenance of the serving repository version (``registered_model``,
   ``registered_version`` and the deployment settings) is compared with it. Equal: the model
   is ``unchanged``; nothing is downloaded or uploaded, and replicas that lost the model (a
   restart in explicit model-control mode) are asked to load it again.
3. Different: ``models:/NAME/VERSION`` is published through
   :meth:`~mlflow_triton.publisher.ModelPublisher.publish`, the code path of
   ``mlflow deployments update``. Once every replica reports it READY, a :class:`SmokeTest`
   sends the model's input example to every replica and compares the answers with the file
   run locally. A refusal or a mismatch rolls everything back and the model is ``failed``.

Concurrency: two reconcilers (two ``watch`` processes, a webhook receiver and a cron ``sync``)
may race on one model. The publisher holds the lease object ``NAME/.mlflow-triton.lease``,
created with an S3 conditional write (``If-None-Match: *``), for the whole publish. The loser
of the race is refused the lease and waits up to ``lease_wait_s``, polling. When the lease is
free it compares provenance again, normally finds the alias version serving and reports
``unchanged``. The repository is never written by two publishers at once.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

from mlflow_triton.config import DeploymentConfig, parse_target_uri, validate_model_name
from mlflow_triton.model_config import NUMPY_DTYPES, as_arrays
from mlflow_triton.model_source import ModelSource, resolve_model
from mlflow_triton.publisher import CONFIG_SETTINGS, DeploymentState, ModelPublisher
from mlflow_triton.server import TritonCluster, raise_failures
from mlflow_triton.store import open_store

logger = logging.getLogger(__name__)

Action = Literal["unchanged", "published", "failed"]

DEFAULT_ALIAS = "production"
#: Seconds a reconciler waits for another publisher's lease before reporting the conflict.
DEFAULT_LEASE_WAIT_S = 300.0
LEASE_POLL_S = 1.0
#: Smoke-test tolerance: Triton's answer vs. the same file run locally.
SMOKE_RTOL = 1e-3
SMOKE_ATOL = 1e-5

_SPEC_KEYS = ("alias", "repository", "triton", "config", "models", "smoke_test", "lease_wait_s")
_MODEL_KEYS = ("registered_model", "deployment", "alias", "config")


# -- the spec ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelPromotion:
    """One registered model whose alias drives one Triton deployment.

    Attributes:
        registered_model: the name in the MLflow Model Registry.
        alias: the alias to follow (``production``).
        deployment: the Triton model name in the repository.
        config: the validated deployment config (repository, batching, instance kind...).
    """

    registered_model: str
    alias: str
    deployment: str
    config: DeploymentConfig


@dataclass(frozen=True)
class PromotionSpec:
    """What to promote, where: built by :func:`load_spec` or :meth:`from_dict`, validated.

    Attributes:
        models: the models to reconcile, in order.
        triton_urls: replicas that read the repository; each must serve the promoted version.
        defaults: the spec's top-level config (used by :func:`rollback` for deployments that
            the spec does not list).
        smoke_test: run :class:`SmokeTest` on every replica before a version counts as published.
        lease_wait_s: how long to wait for a concurrent publisher of the same model.
    """

    models: tuple[ModelPromotion, ...]
    triton_urls: tuple[str, ...]
    defaults: DeploymentConfig
    smoke_test: bool = True
    lease_wait_s: float = DEFAULT_LEASE_WAIT_S

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], require_models: bool = True) -> "PromotionSpec":
        """Validate a spec given as a dict (the parsed YAML file).

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE naming the bad key or value.
        """
        if not isinstance(data, Mapping):
            raise MlflowException.invalid_parameter_value(
                f"A promotion spec must be a mapping with keys {', '.join(_SPEC_KEYS)}; "
                f"got {type(data).__name__}."
            )
        _reject_unknown("promotion spec", data, _SPEC_KEYS)
        alias = _text("alias", data.get("alias") or DEFAULT_ALIAS)
        top_config = _mapping("config", data.get("config"))
        if data.get("repository"):
            top_config["model_repository"] = _text("repository", data["repository"])
        defaults = DeploymentConfig.from_dict(top_config)
        triton = data.get("triton")
        if isinstance(triton, (list, tuple)):
            triton = ",".join(str(url) for url in triton)
        urls = parse_target_uri(f"triton:/{triton}" if triton else "triton")
        lease_wait_s = float(data.get("lease_wait_s", DEFAULT_LEASE_WAIT_S))
        if lease_wait_s < 0:
            raise MlflowException.invalid_parameter_value(
                f"lease_wait_s must be >= 0 seconds, got {lease_wait_s}."
            )
        raw_models = data.get("models") or []
        if not isinstance(raw_models, list):
            raise MlflowException.invalid_parameter_value(
                f"'models' must be a list of {{registered_model: NAME, ...}}, got {raw_models!r}."
            )
        models = tuple(_model_entry(entry, alias, top_config) for entry in raw_models)
        smoke_test = data.get("smoke_test", True)
        if not isinstance(smoke_test, bool):
            raise MlflowException.invalid_parameter_value(
                f"smoke_test must be true or false, got {smoke_test!r}."
            )
        spec = cls(models, tuple(urls), defaults, smoke_test, lease_wait_s)
        spec._validate(require_models)
        return spec

    @classmethod
    def from_yaml(cls, path: str | Path, require_models: bool = True) -> "PromotionSpec":
        """Read and validate a YAML spec file (format in the module docstring)."""
        return cls.from_dict(_read_yaml(path), require_models)

    def select(self, registered_model: str | None = None, alias: str | None = None) -> "PromotionSpec":
        """The same spec restricted to one registered model (and alias), e.g. for a webhook."""
        models = tuple(
            m for m in self.models
            if (registered_model is None or m.registered_model == registered_model)
            and (alias is None or m.alias == alias)
        )  # fmt: skip
        return replace(self, models=models)

    def config_for(self, deployment: str) -> DeploymentConfig:
        """The config of ``deployment`` in this spec, or the top-level config."""
        for model in self.models:
            if model.deployment == deployment:
                return model.config
        return self.defaults

    def _validate(self, require_models: bool) -> None:
        if require_models and not self.models:
            raise MlflowException.invalid_parameter_value(
                "The promotion spec names no model: add models: [{registered_model: NAME}] to "
                "the spec file or pass --model NAME."
            )
        seen: dict[str, str] = {}
        for model in self.models:
            if model.deployment in seen:
                raise MlflowException.invalid_parameter_value(
                    f"Deployment {model.deployment!r} is fed by both {seen[model.deployment]!r} "
                    f"and {model.registered_model!r}: each Triton deployment follows one alias."
                )
            seen[model.deployment] = model.registered_model


def load_spec(
    path: str | Path | None = None,
    *,
    models: Sequence[str] = (),
    alias: str | None = None,
    repository: str | None = None,
    triton: str | None = None,
    config: Mapping[str, Any] | None = None,
    smoke_test: bool | None = None,
    lease_wait_s: float | None = None,
    require_models: bool = True,
) -> PromotionSpec:
    """A spec from a YAML file, from options, or a file with options on top (CLI flags).

    Args:
        path: YAML spec file, optional.
        models: ``REGISTERED[=DEPLOYMENT]`` entries. With a file they select models from it;
            without one they define the models.
        alias: the alias to follow (default ``production``); overrides the file's top level.
        repository: ``s3://bucket/prefix`` (default: the file, then ``TRITON_MODEL_REPO``).
        triton: comma-separated Triton URLs (default: the file, then ``TRITON_URL``).
        config: ``DeploymentConfig`` keys, applied on top of every model's config.
        smoke_test / lease_wait_s: override the file's values.
        require_models: fail when no model is named (``rollback`` needs none).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for a bad file, name, URL or config key.
    """
    data = _read_yaml(path) if path is not None else {}
    wanted = [_parse_model_option(option) for option in models]
    if path is not None and wanted:
        listed = {entry.get("registered_model"): entry for entry in data.get("models") or [] if isinstance(entry, dict)}
        missing = [name for name, _ in wanted if name not in listed]
        if missing:
            raise MlflowException.invalid_parameter_value(
                f"--model {missing} not in the spec {path} (models: {sorted(map(str, listed))})."
            )
        data["models"] = [
            {**listed[name], **({"deployment": deployment} if deployment else {})}
            for name, deployment in wanted
        ]
    elif wanted:
        data["models"] = [
            {"registered_model": name, **({"deployment": deployment} if deployment else {})}
            for name, deployment in wanted
        ]
    if alias:
        data["alias"] = alias
        for entry in data.get("models") or []:
            if isinstance(entry, dict):
                entry.pop("alias", None)  # the flag names the alias for every selected model
    if repository:
        data["repository"] = repository
    if triton:
        data["triton"] = triton
    if smoke_test is not None:
        data["smoke_test"] = smoke_test
    if lease_wait_s is not None:
        data["lease_wait_s"] = lease_wait_s
    if config:
        data["config"] = {**_mapping("config", data.get("config")), **dict(config)}
        data["models"] = [
            {**entry, "config": {**_mapping("config", entry.get("config")), **dict(config)}}
            if isinstance(entry, dict) else entry
            for entry in data.get("models") or []
        ]  # fmt: skip
    return PromotionSpec.from_dict(data, require_models=require_models)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise MlflowException.invalid_parameter_value(
            f"Cannot read the promotion spec {path}: {err}"
        ) from err
    if not isinstance(data, dict):
        raise MlflowException.invalid_parameter_value(
            f"The promotion spec {path} must be a YAML mapping, got {type(data).__name__}."
        )
    return dict(data)


def _parse_model_option(option: str) -> tuple[str, str | None]:
    name, _, deployment = option.partition("=")
    if not name.strip():
        raise MlflowException.invalid_parameter_value(
            f"--model expects REGISTERED_MODEL[=DEPLOYMENT], got {option!r}."
        )
    return name.strip(), deployment.strip() or None


def _model_entry(entry: Any, alias: str, top_config: Mapping[str, Any]) -> ModelPromotion:
    if isinstance(entry, str):
        entry = {"registered_model": entry}
    if not isinstance(entry, Mapping):
        raise MlflowException.invalid_parameter_value(
            f"Each entry of 'models' must be a mapping with keys {', '.join(_MODEL_KEYS)}; "
            f"got {entry!r}."
        )
    _reject_unknown("models entry", entry, _MODEL_KEYS)
    if not entry.get("registered_model"):
        raise MlflowException.invalid_parameter_value(
            f"A models entry needs 'registered_model': got {dict(entry)!r}."
        )
    name = _text("registered_model", entry["registered_model"])
    deployment = validate_model_name(str(entry.get("deployment") or name))
    config = DeploymentConfig.from_dict({**top_config, **_mapping("config", entry.get("config"))})
    config.require_repository()
    return ModelPromotion(name, _text("alias", entry.get("alias") or alias), deployment, config)


def _reject_unknown(where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise MlflowException.invalid_parameter_value(
            f"Unknown key(s) {unknown} in the {where}; valid keys: {', '.join(allowed)}."
        )


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MlflowException.invalid_parameter_value(
            f"{key!r} must be a mapping of config keys to values, got {value!r}."
        )
    return dict(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MlflowException.invalid_parameter_value(f"{key!r} must be a non-empty string, got {value!r}.")
    return value.strip()


# -- reports -------------------------------------------------------------------------------------
@dataclass
class ModelReport:
    """What one reconciliation did to one model.

    Attributes:
        action: ``unchanged``, ``published`` or ``failed``.
        registry_version: the registry version the alias points to (None if unresolved).
        previous_registry_version: the registry version that served before, per provenance.
        triton_version / previous_triton_version: repository (Triton) versions after / before.
        bytes_uploaded / bytes_copied: bytes sent to the repository (copied = S3 server-side).
        reloaded: replicas that had lost the serving version and were asked to load it again.
        seconds: wall time of this model's reconciliation.
        error: the reason of a failure.
    """

    registered_model: str
    alias: str
    deployment: str
    action: Action = "failed"
    registry_version: str | None = None
    previous_registry_version: str | None = None
    triton_version: int | None = None
    previous_triton_version: int | None = None
    bytes_uploaded: int = 0
    bytes_copied: int = 0
    reloaded: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for logs and the CLI."""
        head = f"{self.registered_model}@{self.alias} -> {self.deployment}"
        if self.action == "failed":
            return f"{head}: failed after {self.seconds:.1f}s: {self.error}"
        if self.action == "unchanged":
            extra = f"; reloaded on {', '.join(self.reloaded)}" if self.reloaded else ""
            return (
                f"{head}: unchanged (registry version {self.registry_version} serves as Triton "
                f"version {self.triton_version}{extra})"
            )
        was = (
            f"was registry {self.previous_registry_version}, Triton {self.previous_triton_version}"
            if self.previous_triton_version is not None else "new deployment"
        )  # fmt: skip
        return (
            f"{head}: published registry version {self.registry_version} as Triton version "
            f"{self.triton_version} ({was}; {self.bytes_uploaded} bytes uploaded, "
            f"{self.bytes_copied} copied) in {self.seconds:.1f}s"
        )


@dataclass
class SyncReport:
    """One reconciliation round: a :class:`ModelReport` per model of the spec."""

    models: list[ModelReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no model failed."""
        return all(m.action != "failed" for m in self.models)

    @property
    def changed(self) -> bool:
        return any(m.action == "published" for m in self.models)

    @property
    def failures(self) -> list[ModelReport]:
        return [m for m in self.models if m.action == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "models": [m.to_dict() for m in self.models]}


@dataclass
class RollbackResult:
    """What :func:`rollback` did.

    Attributes:
        changed: False when ``version`` already served.
        registered_model / registered_version: registry coordinates of the version now served.
        alias_set: the alias moved to ``registered_version`` (``set_alias``), if any.
    """

    deployment: str
    version: int
    previous_version: int | None
    changed: bool
    registered_model: str | None = None
    registered_version: str | None = None
    alias_set: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the smoke test ------------------------------------------------------------------------------
class SmokeTest:
    """Send the model's input example to every replica; compare with the file run locally.

    Used as the publisher's ``verify`` callback: it runs once every replica reports the new
    version READY and raises to make the publisher roll back. The expected output comes from
    the very file Triton serves, run with onnxruntime (``onnx``) or ``torch.jit.load``
    (``torchscript``); they must match within ``rtol``/``atol``.

    Args:
        publisher: the publisher (its cluster and repository) of the deployment.
        name: the Triton deployment name.
        flavor: ``onnx`` or ``torchscript``.
        input_example: the MLflow input example (dict of arrays, array or DataFrame); None
            means zeros shaped like the signature (or the ONNX graph), ``-1`` axes set to 1.
        signature: the MLflow signature, for the zeros fallback.
        rtol / atol: tolerances of ``numpy.allclose``.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE at construction when the local runtime
            (onnxruntime or torch) is missing, before anything is published.

    Example:
        >>> smoke = SmokeTest.for_source(publisher, "fraud", source)  # doctest: +SKIP
        >>> publisher.publish("fraud", source, verify=smoke)          # doctest: +SKIP
    """

    def __init__(
        self,
        publisher: ModelPublisher,
        name: str,
        flavor: str,
        input_example: Any = None,
        signature: Any = None,
        rtol: float = SMOKE_RTOL,
        atol: float = SMOKE_ATOL,
    ) -> None:
        self.publisher = publisher
        self.name = name
        self.flavor = flavor
        self.input_example = input_example
        self.signature = signature
        self.rtol = rtol
        self.atol = atol
        _require_runtime(flavor)

    @classmethod
    def for_source(cls, publisher: ModelPublisher, name: str, source: ModelSource) -> "SmokeTest":
        """A smoke test fed with ``source``'s logged input example (read now, before publishing)."""
        try:
            example = source.load_input_example()
        except Exception as err:
            raise MlflowException(
                f"Cannot read the input example of {source.model_uri} for the smoke test: {err}",
                error_code=RESOURCE_DOES_NOT_EXIST,
            ) from err
        return cls(publisher, name, source.flavor, example, source.signature)

    def __call__(self, version: int, model_file: Path | None = None) -> None:
        """Check ``version`` on every replica; ``model_file`` defaults to the repository copy."""
        provenance = self.publisher.read_provenance(self.name, version) or {}
        tensors = provenance.get("tensors")
        if not tensors:
            raise MlflowException(
                f"{self.name!r} version {version} has no tensor map in its provenance.",
                error_code=INTERNAL_ERROR,
            )
        with tempfile.TemporaryDirectory(prefix="mlflow-triton-smoke-") as tmp:
            if model_file is None:
                model_file = self._fetch(version, provenance, Path(tmp))
            arrays = self._inputs(tensors["inputs"], model_file, provenance)
            expected = self._run_locally(model_file, tensors, arrays)
        inputs = {t["triton"]: arrays[t["mlflow"]] for t in tensors["inputs"]}
        datatypes = {t["triton"]: t["datatype"] for t in tensors["inputs"]}
        outputs = [t["triton"] for t in tensors["outputs"]]
        failures: dict[str, Exception | None] = {}
        for url in self.publisher.cluster.urls:
            try:
                with self.publisher.cluster.server(url) as server:
                    actual = server.infer(self.name, inputs, datatypes, outputs, version=version)
                self._compare(expected, actual)
            except Exception as err:
                failures[url] = err
        raise_failures(f"pass the smoke test of {self.name!r} version {version}", failures)
        logger.debug("Smoke test of %s version %d passed on %s", self.name, version, self.publisher.cluster.urls)

    def _fetch(self, version: int, provenance: Mapping[str, Any], tmp: Path) -> Path:
        filename = provenance.get("artifact", {}).get("file", "model.onnx")
        data = self.publisher.store.read_bytes(f"{self.name}/{version}/{filename}")
        if data is None:
            raise MlflowException(
                f"{self.publisher.store.url(f'{self.name}/{version}/{filename}')} is missing.",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
        path = tmp / filename
        path.write_bytes(data)
        return path

    def _inputs(
        self, specs: list[dict[str, str]], model_file: Path, provenance: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:

        if self.input_example is not None:
            arrays = as_arrays(self.input_example, specs)
        else:
            arrays = self._zeros(specs, model_file)
        settings = provenance.get("settings") or {}
        limit = int(settings.get("max_batch_size", self.publisher.config.max_batch_size))
        if limit > 0:  # the batch axis must fit max_batch_size
            arrays = {k: v[:limit] for k, v in arrays.items()}
        return arrays

    def _zeros(self, specs: list[dict[str, str]], model_file: Path) -> dict[str, np.ndarray]:
        from mlflow_triton import model_config as mcfg

        shapes: dict[str, tuple[int, ...]] = {}
        schema = getattr(self.signature, "inputs", None)
        if schema is not None and schema.is_tensor_spec():
            shapes = {s.name: tuple(s.shape) for s in schema.inputs if s.name}
        if self.flavor == "onnx":
            graph = {t.name: t.shape for t in mcfg.io_from_onnx(model_file).inputs}
            shapes = {t["mlflow"]: shapes.get(t["mlflow"], graph.get(t["triton"])) for t in specs}
        missing = [t["mlflow"] for t in specs if shapes.get(t["mlflow"]) is None]
        if missing:
            raise MlflowException.invalid_parameter_value(
                f"No input example and no shape for input(s) {missing} of {self.name!r}: log the "
                "model with input_example=... (or a tensor signature) to enable the smoke test."
            )
        return {
            t["mlflow"]: np.zeros([d if d > 0 else 1 for d in shapes[t["mlflow"]]], NUMPY_DTYPES[t["datatype"]])
            for t in specs
        }  # fmt: skip

    def _run_locally(
        self, model_file: Path, tensors: Mapping[str, list[dict[str, str]]], arrays: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        outputs = [t["triton"] for t in tensors["outputs"]]
        if self.flavor == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
            feed = {t["triton"]: arrays[t["mlflow"]] for t in tensors["inputs"]}
            return dict(zip(outputs, session.run(outputs, feed)))
        import torch

        module = torch.jit.load(str(model_file), map_location="cpu").eval()
        with torch.no_grad():
            result = module(*[torch.from_numpy(np.array(arrays[t["mlflow"]])) for t in tensors["inputs"]])
        values = result if isinstance(result, (tuple, list)) else (result,)
        return {name: value.detach().cpu().numpy() for name, value in zip(outputs, values)}

    def _compare(self, expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> None:
        for output, want in expected.items():
            got = actual.get(output)
            if got is None or np.shape(got) != np.shape(want):
                raise MlflowException(
                    f"output {output!r} has shape {np.shape(got)}, the local {self.flavor} run "
                    f"gives {np.shape(want)}",
                    error_code=INTERNAL_ERROR,
                )
            if want.dtype.kind in "biufc":
                if not np.allclose(got, want, rtol=self.rtol, atol=self.atol):
                    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
                    raise MlflowException(
                        f"output {output!r} differs from the local {self.flavor} run: max abs "
                        f"diff {diff:.3g} (rtol={self.rtol}, atol={self.atol})",
                        error_code=INTERNAL_ERROR,
                    )
            elif not np.array_equal(got, want):
                raise MlflowException(
                    f"output {output!r} differs from the local {self.flavor} run",
                    error_code=INTERNAL_ERROR,
                )


def _require_runtime(flavor: str) -> None:
    import importlib.util

    module = "onnxruntime" if flavor == "onnx" else "torch"
    if importlib.util.find_spec(module) is None:
        raise MlflowException.invalid_parameter_value(
            f"The smoke test runs {flavor} models locally with {module}, which is not installed: "
            "pip install 'mlflow-triton[local]', or disable it (smoke_test=False, "
            "--no-smoke-test)."
        )


# -- reconciliation ------------------------------------------------------------------------------
#: Models reconciled at once by :func:`sync` (I/O bound: registry, S3 and Triton round trips).
SYNC_WORKERS = 8


def publisher_for(
    config: DeploymentConfig, triton_urls: Sequence[str], stores: dict[Any, Any] | None = None
) -> ModelPublisher:
    """The publisher of one deployment: its repository store and the Triton replicas.

    ``stores`` shares one store (one boto3 client, thread-safe) between the deployments of one
    reconciliation that use the same repository.
    """
    key = (config.require_repository(), config.s3_endpoint_url)
    store = stores.get(key) if stores is not None else None
    if store is None:
        store = open_store(*key)
        if stores is not None:
            stores[key] = store
    cluster = TritonCluster(list(triton_urls), config.protocol, timeout_s=config.wait_ready_timeout)
    return ModelPublisher(store, cluster, config)


def sync(spec: PromotionSpec, registered_model: str | None = None) -> SyncReport:
    """Reconcile once: make every replica serve the version each alias points to.

    Idempotent: when the serving version's provenance already names the alias version (with
    the same settings), nothing is downloaded or uploaded. Failures are reported per model,
    never raised, so one bad model does not stop the others.

    Args:
        spec: what to promote (see :class:`PromotionSpec`).
        registered_model: reconcile only this registered model (a webhook event).

    Returns:
        A :class:`SyncReport`; ``report.ok`` is False when a model failed (its previous
        version still serves: the publisher rolled back).

    Example::

        report = sync(load_spec(models=["fraud"], alias="production"))
        assert report.ok, [m.error for m in report.failures]
    """
    selected = spec.select(registered_model) if registered_model is not None else spec
    from mlflow import MlflowClient

    round_ = _Round(MlflowClient(), selected)
    with ThreadPoolExecutor(max_workers=max(1, min(SYNC_WORKERS, len(selected.models)))) as pool:
        return SyncReport(list(pool.map(round_.reconcile, selected.models)))


class _Round:
    """What one reconciliation reads once for all models: every alias (one paginated registry
    search instead of one call per model), each replica's repository index, shared stores."""

    def __init__(self, registry: Any, spec: PromotionSpec) -> None:
        self.registry = registry
        self.spec = spec
        self.stores: dict[Any, Any] = {}
        self.aliases = _all_aliases(registry, {m.registered_model for m in spec.models})
        self.ready = _ready_snapshot(spec.triton_urls)

    def reconcile(self, model: ModelPromotion) -> ModelReport:
        return _reconcile(model, self.spec, self.registry, self)


def _all_aliases(registry: Any, names: set[str]) -> dict[str, dict[str, str]]:
    """``{registered model: {alias: version}}`` for ``names``; {} if the search fails."""
    found: dict[str, dict[str, str]] = {}
    if len(names) < 2:
        return found  # one model: get_model_version_by_alias is as cheap
    token = None
    try:
        while True:
            page = registry.search_registered_models(max_results=1000, page_token=token)
            for model in page:
                if model.name in names:
                    found[model.name] = {a: str(v) for a, v in (model.aliases or {}).items()}
            token = page.token
            if not token:
                return found
    except MlflowException as err:
        logger.debug("Registry search failed (%s); resolving aliases one by one", err.message)
        return {}


def _ready_snapshot(urls: Sequence[str]) -> dict[str, set[tuple[str, str]]]:
    """``{url: {(model, version) READY}}`` from one repository-index call per replica."""
    snapshot: dict[str, set[tuple[str, str]]] = {}
    for url, index in TritonCluster(list(urls)).repository_index().items():
        if not isinstance(index, Exception):
            snapshot[url] = {
                (e.get("name"), str(e.get("version"))) for e in index if e.get("state") == "READY"
            }
    return snapshot


def _reconcile(
    model: ModelPromotion, spec: PromotionSpec, registry: Any, round_: _Round | None = None
) -> ModelReport:
    started = time.monotonic()
    report = ModelReport(model.registered_model, model.alias, model.deployment)
    try:
        target = _alias_version(registry, model, round_.aliases if round_ else None)
        report.registry_version = target
        publisher = publisher_for(model.config, spec.triton_urls, round_.stores if round_ else None)
        deadline = started + spec.lease_wait_s
        while True:
            try:
                _reconcile_once(publisher, model, target, spec.smoke_test, report, round_.ready if round_ else None)
                break
            except (MlflowException, _Changed) as err:
                if not _is_lease_conflict(err) or time.monotonic() >= deadline:
                    raise
                logger.debug("%s is being published by another process; waiting", model.deployment)
                time.sleep(LEASE_POLL_S)
    except Exception as err:  # reported, not raised: the other models still reconcile
        report.action = "failed"
        report.error = err.message if isinstance(err, MlflowException) else f"{type(err).__name__}: {err}"
    report.seconds = round(time.monotonic() - started, 3)
    if report.action == "failed":
        logger.error("%s", report.describe())
    else:
        logger.info("%s", report.describe())
    return report


def _reconcile_once(
    publisher: ModelPublisher, model: ModelPromotion, target: str, smoke_test: bool,
    report: ModelReport, ready: dict[str, set[tuple[str, str]]] | None = None,
) -> None:  # fmt: skip
    state = publisher.read_state(model.deployment)
    provenance = state.provenance or {}
    report.previous_triton_version = state.serving_version
    if provenance.get("registered_model") == model.registered_model:
        report.previous_registry_version = provenance.get("registered_version")
    if _serves(state, model, target):
        report.reloaded = _ensure_loaded(publisher, model.deployment, state.serving_version, ready)
        report.action = "unchanged"
        report.triton_version = state.serving_version
        return
    source = resolve_model(f"models:/{model.registered_model}/{target}", model.config.flavor)
    verify = SmokeTest.for_source(publisher, model.deployment, source) if smoke_test else None
    result = publisher.publish(model.deployment, source, mode="any", verify=verify)
    report.action = "published" if result.changed else "unchanged"
    report.triton_version = result.version
    report.bytes_uploaded = result.bytes_uploaded
    report.bytes_copied = result.bytes_copied


def _alias_version(
    registry: Any, model: ModelPromotion, aliases: dict[str, dict[str, str]] | None = None
) -> str:
    known = (aliases or {}).get(model.registered_model, {})
    if model.alias in known:
        return known[model.alias]
    try:
        version = registry.get_model_version_by_alias(model.registered_model, model.alias)
    except MlflowException as err:
        raise MlflowException(
            f"Cannot resolve alias {model.alias!r} of registered model {model.registered_model!r}: "
            f"{err.message}",
            error_code=RESOURCE_DOES_NOT_EXIST,
        ) from err
    return str(version.version)


def _expected_settings(config: DeploymentConfig, flavor: str | None) -> dict[str, Any]:
    """The settings a publish with ``config`` records in provenance (see ``CONFIG_SETTINGS``)."""
    return {"flavor": flavor, **{key: getattr(config, key) for key in CONFIG_SETTINGS}}


def _serves(state: DeploymentState, model: ModelPromotion, target: str) -> bool:
    """Cheap check, from provenance only: does the alias version serve, with these settings?"""
    provenance = state.provenance or {}
    if state.serving_version is None or not provenance:
        return False
    if provenance.get("registered_model") != model.registered_model:
        return False
    if str(provenance.get("registered_version")) != target:
        return False
    flavor = model.config.flavor or provenance.get("flavor")
    return provenance.get("settings") == _expected_settings(model.config, flavor)


def _ensure_loaded(
    publisher: ModelPublisher, name: str, version: int | None,
    ready: dict[str, set[tuple[str, str]]] | None = None,
) -> list[str]:  # fmt: skip
    """Ask replicas that lost ``version`` (a restart) to load it; returns their URLs."""
    assert version is not None
    if ready and all((name, str(version)) in ready.get(url, set()) for url in publisher.cluster.urls):
        return []  # every replica listed it READY at the start of this round
    missing = publisher.cluster.not_ready(name, version)
    if not missing:
        return []
    with publisher.lease(name):  # never load while another publisher switches config.pbtxt
        if publisher.read_state(name).serving_version != version:
            raise _Changed(f"{name!r} was republished while reconciling")
        missing = publisher.cluster.not_ready(name, version)
        raise_failures(f"load {name!r} version {version}", publisher.cluster.load_model(name, version, missing))
    logger.info("Reloaded %s version %d on %s", name, version, ", ".join(missing))
    return missing



class _Changed(Exception):
    """Another publisher switched the deployment under us: compare again."""


def _is_lease_conflict(err: Exception) -> bool:
    if isinstance(err, _Changed):
        return True
    return (
        isinstance(err, MlflowException)
        and err.error_code == "RESOURCE_ALREADY_EXISTS"
        and "lease" in err.message
    )


def watch(
    spec: PromotionSpec,
    interval_s: float = 30.0,
    stop_event: threading.Event | None = None,
    max_rounds: int | None = None,
    on_report: Callable[[SyncReport], None] | None = None,
) -> SyncReport | None:
    """Reconcile every ``interval_s`` seconds until ``stop_event`` is set.

    Setting ``stop_event`` (the CLI does on SIGINT/SIGTERM) never interrupts a round: the
    current publish finishes, or rolls back, before :func:`watch` returns.

    Args:
        spec: what to promote.
        interval_s: pause between the end of a round and the start of the next (> 0).
        stop_event: set it to stop; default: run until ``max_rounds``.
        max_rounds: stop after this many rounds (None: no limit).
        on_report: called with each round's :class:`SyncReport`.

    Returns:
        The last round's report (None if stopped before the first round).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for ``interval_s <= 0`` or ``max_rounds < 1``.
    """
    if interval_s <= 0:
        raise MlflowException.invalid_parameter_value(f"interval must be > 0 seconds, got {interval_s}.")
    if max_rounds is not None and max_rounds < 1:
        raise MlflowException.invalid_parameter_value(f"max_rounds must be >= 1, got {max_rounds}.")
    stop_event = stop_event or threading.Event()
    last: SyncReport | None = None
    rounds = 0
    while not stop_event.is_set():
        last = sync(spec)
        rounds += 1
        if on_report is not None:
            on_report(last)
        if max_rounds is not None and rounds >= max_rounds:
            break
        stop_event.wait(interval_s)
    logger.info("Watch stopped after %d round(s)", rounds)
    return last


def rollback(
    spec: PromotionSpec,
    deployment: str,
    to_version: int | None = None,
    set_alias: str | None = None,
) -> RollbackResult:
    """Serve an earlier published version of ``deployment`` again, on every replica.

    The version must still be in the repository (``keep_versions``, default 2, keeps the
    previous one). It goes through :meth:`ModelPublisher.activate`: the lease, the same
    config swap, a :class:`SmokeTest` (when ``spec.smoke_test``), and a full restore if a
    replica refuses.

    The registry alias is not moved unless ``set_alias`` is given. A running :func:`watch`
    (or the next :func:`sync`) then publishes the alias version again. Pass
    ``set_alias="production"`` to point the alias at the rolled-back registry version, so
    the rollback sticks.

    Args:
        spec: gives the repository, the Triton replicas and the deployment's config.
        deployment: the Triton model name.
        to_version: repository version to serve; default: the newest one older than the
            serving version.
        set_alias: also move this registry alias to the registry version now served.

    Returns:
        A :class:`RollbackResult`.

    Raises:
        MlflowException: RESOURCE_DOES_NOT_EXIST when no such (or no earlier) version is kept;
            INTERNAL_ERROR when a replica refuses (the serving version is restored).

    Example::

        rollback(load_spec(require_models=False), "fraud")    # mlflow-triton rollback fraud
    """
    validate_model_name(deployment)
    started = time.monotonic()
    publisher = publisher_for(spec.config_for(deployment), spec.triton_urls)
    state = publisher.read_state(deployment)
    if not state.exists or state.serving_version is None:
        raise MlflowException(
            f"No deployment named {deployment!r} in {publisher.store.uri}.",
            error_code=RESOURCE_DOES_NOT_EXIST,
        )
    version = to_version if to_version is not None else _previous_version(state)
    provenance = publisher.read_provenance(deployment, version) if version in state.versions else None
    if provenance is None:
        raise MlflowException(
            f"{deployment!r} has no published version {version} in {publisher.store.uri} "
            f"(versions kept: {state.versions}).",
            error_code=RESOURCE_DOES_NOT_EXIST,
        )
    registered = provenance.get("registered_model"), provenance.get("registered_version")
    if set_alias and not all(registered):
        raise MlflowException.invalid_parameter_value(
            f"{deployment!r} version {version} was not published from the Model Registry "
            f"(model URI {provenance.get('model_uri')}), so no alias can point at it."
        )
    result = RollbackResult(deployment, version, state.serving_version, False, *registered)
    if version != state.serving_version:
        verify = _rollback_smoke_test(publisher, deployment, provenance) if spec.smoke_test else None
        publisher.activate(deployment, version, verify=verify)
        result.changed = True
    if set_alias:
        from mlflow import MlflowClient

        try:
            MlflowClient().set_registered_model_alias(registered[0], set_alias, registered[1])
        except MlflowException as err:
            raise MlflowException(
                f"{deployment!r} now serves version {version}, but alias {set_alias!r} of "
                f"{registered[0]!r} could not be moved to version {registered[1]}: {err.message}",
                error_code=err.error_code,
            ) from err
        result.alias_set = set_alias
    result.seconds = round(time.monotonic() - started, 3)
    logger.info(
        "Rolled back %s to version %d (was %s; registry %s version %s)%s", deployment, version,
        state.serving_version, registered[0], registered[1],
        f"; alias {set_alias!r} moved" if set_alias else "",
    )  # fmt: skip
    return result


def _previous_version(state: DeploymentState) -> int:
    serving = state.serving_version
    older = [v for v in state.versions if serving is not None and v < serving]
    if not older:
        raise MlflowException(
            f"{state.name!r} keeps no version older than the serving version {serving} "
            f"(versions: {state.versions}); pass --to VERSION or raise keep_versions.",
            error_code=RESOURCE_DOES_NOT_EXIST,
        )
    return max(older)


def _rollback_smoke_test(
    publisher: ModelPublisher, deployment: str, provenance: Mapping[str, Any]
) -> Callable[[int], None]:
    """A smoke test for a repository version, fed with its MLflow model's input example."""
    flavor = provenance.get("flavor", "onnx")
    model_uri = provenance.get("model_uri")
    try:
        source = resolve_model(model_uri, flavor) if model_uri else None
    except MlflowException as err:
        raise MlflowException(
            f"Cannot read {model_uri} for the rollback smoke test ({err.message}); retry with "
            "--no-smoke-test if MLflow is unreachable.",
            error_code=err.error_code,
        ) from err
    if source is None:
        return SmokeTest(publisher, deployment, flavor)
    return SmokeTest.for_source(publisher, deployment, source)
