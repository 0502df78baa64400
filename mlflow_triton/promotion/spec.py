"""The promotion spec: which registered models' aliases drive which Triton deployments.

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

Everything is validated when the spec is built, before any network call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlflow.exceptions import MlflowException

from mlflow_triton.repository.layout import validate_model_name
from mlflow_triton.settings.deployment import DeploymentConfig
from mlflow_triton.settings.target import parse_target_uri

DEFAULT_ALIAS = "production"
#: Seconds a reconciler waits for another publisher's lease before reporting the conflict.
DEFAULT_LEASE_WAIT_S = 300.0

_SPEC_KEYS = ("alias", "repository", "triton", "config", "models", "smoke_test", "lease_wait_s")
_MODEL_KEYS = ("registered_model", "deployment", "alias", "config")

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

    @property
    def target_uri(self) -> str:
        """The replicas as a target URI (``dns+`` names unresolved), for the audit tags."""
        return f"triton:/{','.join(self.triton_urls)}"

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


def _select_models(data: dict[str, Any], path: str | Path | None, wanted: list[tuple[str, str | None]]) -> None:
    """``--model`` options: with a file they select its models; without one they define them."""
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
    _select_models(data, path, [_parse_model_option(option) for option in models])
    if alias:
        data["alias"] = alias
        for entry in data.get("models") or []:
            if isinstance(entry, dict):
                entry.pop("alias", None)  # the flag names the alias for every selected model
    flags = {"repository": repository, "triton": triton, "smoke_test": smoke_test, "lease_wait_s": lease_wait_s}
    data.update({key: value for key, value in flags.items() if value not in (None, "")})
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
