"""Deployment configuration: every key, its default, and the parsing of ``-C key=value`` strings.

All validation happens here, before any upload or network call (target URIs are parsed by
:mod:`mlflow_triton.settings.target`)::

    config = DeploymentConfig.from_dict({"max_batch_size": "16", "instance_kind": "cpu"})
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Mapping
from urllib.parse import urlparse

from mlflow.exceptions import MlflowException

from mlflow_triton.flavors.registry import normalize_flavor
from mlflow_triton.triton_config.acceleration import ACCELERATORS, PRECISIONS, check_settings
from mlflow_triton.triton_config.override import load_override
from mlflow_triton.triton_config.warmup import WARMUP_MODES

InstanceKind = Literal["gpu", "cpu", "auto"]
Protocol = Literal["http", "grpc"]

INSTANCE_KINDS: tuple[str, ...] = ("gpu", "cpu", "auto")
PROTOCOLS: tuple[str, ...] = ("http", "grpc")
#: DeploymentConfig keys recorded in provenance (see :meth:`DeploymentConfig.settings`).
CONFIG_SETTINGS = (
    "max_batch_size", "dynamic_batching", "preferred_batch_size",
    "max_queue_delay_microseconds", "instance_kind", "instance_count",
    "config_override", "warmup", "accelerator", "precision", "trt_workspace_bytes", "gpus",
    "response_cache",
)  # fmt: skip
#: Settings recorded in provenance only when they differ from their default, so deployments
#: published before these keys existed stay no-ops (their config takes them at the next publish).
RECORDED_WHEN_SET = (
    "config_override", "warmup", "accelerator", "precision", "trt_workspace_bytes", "gpus",
    "response_cache",
)  # fmt: skip



@dataclass
class DeploymentConfig:
    """Every configuration key of the ``triton`` target, with its default.

    Attributes:
        model_repository: ``s3://bucket/prefix`` or a local directory (env ``TRITON_MODEL_REPO``).
        s3_endpoint_url: S3-compatible endpoint (MinIO, moto); default: boto3's resolution,
            which honours ``AWS_ENDPOINT_URL_S3``.
        flavor: ``onnx``, ``torchscript``, ``triton`` (a Triton model directory) or
            ``python_function`` (any pyfunc model, served by Triton's Python backend);
            default: what the model has, in that order of preference.
        max_batch_size: Triton ``max_batch_size``; 0 disables batching (no batch axis).
        dynamic_batching: generate a ``dynamic_batching`` block (only when batching).
        preferred_batch_size: preferred batch sizes for the dynamic batcher (none by default,
            as Triton recommends unless a model is measurably faster at given sizes).
        max_queue_delay_microseconds: how long the batcher may wait to form a batch.
        instance_kind: ``auto`` (KIND_AUTO, the default), ``gpu`` (KIND_GPU) or ``cpu``
            (KIND_CPU). Triton turns KIND_AUTO into KIND_GPU on every GPU of a server that has
            GPUs and into KIND_CPU on one that has none, so the default loads on a CPU dev
            stack and on GPU servers alike. ``gpu`` states the intent: a server without GPUs
            then refuses the model, and GPU-only options (``accelerator``, ``gpus``, warmup
            under ``warmup=auto``) need it.
        instance_count: model instances per device.
        keep_versions: published versions kept in the repository (the serving one included).
        wait_ready_timeout: seconds to wait for every server to report the version READY.
        protocol: ``http`` or ``grpc`` for inference and control.
        verify: before a version serves, load it under a staging name on every replica and
            run a smoke inference compared with the model run locally (``false``: loading
            everywhere is the only check).
        lease_wait: seconds to wait while another live publisher holds the deployment's
            lease.
        lease_ttl: seconds without renewal after which a publisher's lease expires, so a
            publisher killed mid-publish blocks others this long at most (renewed every
            ``lease_ttl / 3`` while it runs).
        python_env: a packed Python environment (``.tar.gz``, e.g. from conda-pack) for
            ``python_function`` models: shipped in the version folder and named by the
            config's ``EXECUTION_ENV_PATH``. Default: the server's own Python environment.
        config_override: a ``ModelConfig`` fragment (a file path or inline pbtxt) merged into
            the generated config; kept in canonical text form (see
            :mod:`mlflow_triton.triton_config.override`).
        warmup: ``auto`` (model_warmup unless instance_kind is ``cpu``), ``true`` or ``false``.
        accelerator: ``tensorrt``, ``cuda`` or ``none``: ONNX Runtime's GPU execution
            accelerator (see :mod:`mlflow_triton.triton_config.acceleration`).
        precision: ``fp16`` or ``fp32`` for TensorRT (``precision_mode``).
        trt_workspace_bytes: TensorRT ``max_workspace_size_bytes``.
        gpus: GPU indices for ``instance_group.gpus`` (KIND_GPU only).
        response_cache: ``response_cache { enable: true }`` (Triton needs ``--cache-config``).
    """

    model_repository: str | None = None
    s3_endpoint_url: str | None = None
    flavor: str | None = None
    max_batch_size: int = 32
    dynamic_batching: bool = True
    preferred_batch_size: list[int] = field(default_factory=list)
    max_queue_delay_microseconds: int = 200
    instance_kind: str = "auto"
    instance_count: int = 1
    keep_versions: int = 2
    wait_ready_timeout: float = 300.0
    protocol: str = "http"
    verify: bool = True
    lease_wait: float = 120.0
    lease_ttl: float = 30.0
    python_env: str | None = None
    config_override: str | None = None
    warmup: str = "auto"
    accelerator: str = "none"
    precision: str | None = None
    trt_workspace_bytes: int | None = None
    gpus: list[int] = field(default_factory=list)
    response_cache: bool = False

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def settings(self, flavor: str | None) -> dict[str, Any]:
        """The settings that shape the generated config.pbtxt, as recorded in provenance:
        the same artifact with the same settings is a no-op."""
        defaults = DeploymentConfig()
        settings = {
            "flavor": flavor,
            **{
                key: getattr(self, key) for key in CONFIG_SETTINGS
                if key not in RECORDED_WHEN_SET or getattr(self, key) != getattr(defaults, key)
            },
        }  # fmt: skip
        if self.python_env:  # recorded only when set: older provenance stays comparable
            settings["python_env"] = self.python_env
        return settings

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None = None) -> "DeploymentConfig":
        """Build a config from user values (strings from ``-C`` or typed Python values).

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE naming the key, the value and the fix.
        """
        config = dict(config or {})
        unknown = sorted(set(config) - set(cls.keys()))
        if unknown:
            raise MlflowException.invalid_parameter_value(
                f"Unknown config key(s) {_with_suggestions(unknown, cls.keys())} for the triton "
                f"target. Valid keys: {', '.join(cls.keys())}."
            )
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in config and config[f.name] is not None:
                values[f.name] = _convert(f.name, config[f.name], f.type)
        parsed = cls(**values)
        parsed.flavor = normalize_flavor(parsed.flavor)  # one spelling in provenance and comparisons
        if "warmup" in values and str(values["warmup"]).lower() in _BOOL_WORDS:
            parsed.warmup = _BOOL_WORDS[str(values["warmup"]).lower()]
        if parsed.precision is not None:
            parsed.precision = parsed.precision.lower()  # Triton spells it FP16 / FP32
        parsed.config_override = load_override(parsed.config_override)
        if parsed.model_repository is None and os.environ.get("TRITON_MODEL_REPO"):
            parsed.model_repository = os.environ["TRITON_MODEL_REPO"]
        parsed.validate()
        return parsed

    def merged(self, overrides: Mapping[str, Any] | None) -> "DeploymentConfig":
        """A copy with ``overrides`` applied on top of this config's values."""
        return DeploymentConfig.from_dict({**asdict(self), **dict(overrides or {})})

    def validate(self) -> None:
        normalize_flavor(self.flavor)
        if self.python_env is not None and not self.python_env.endswith(".tar.gz"):
            raise MlflowException.invalid_parameter_value(
                f"python_env must name a packed environment archive ending in .tar.gz (what "
                f"Triton's Python backend unpacks, e.g. made with conda-pack), got "
                f"{self.python_env!r}."
            )
        _choice("instance_kind", self.instance_kind, INSTANCE_KINDS)
        _choice("protocol", self.protocol, PROTOCOLS)
        _choice("warmup", self.warmup, WARMUP_MODES)
        _choice("accelerator", self.accelerator, ACCELERATORS)
        _choice("precision", self.precision, PRECISIONS, optional=True)
        check_settings(self.accelerator, self.precision, self.trt_workspace_bytes, self.gpus, self.instance_kind)
        _at_least("max_batch_size", self.max_batch_size, 0)
        _at_least("instance_count", self.instance_count, 1)
        _at_least("keep_versions", self.keep_versions, 1)
        _at_least("max_queue_delay_microseconds", self.max_queue_delay_microseconds, 0)
        if self.lease_ttl < 3:
            raise MlflowException.invalid_parameter_value(
                f"lease_ttl must be >= 3 seconds (it is renewed every lease_ttl / 3), got "
                f"{self.lease_ttl}."
            )
        if self.lease_wait < 0:
            raise MlflowException.invalid_parameter_value(
                f"lease_wait must be >= 0 seconds, got {self.lease_wait}."
            )
        if self.wait_ready_timeout <= 0:
            raise MlflowException.invalid_parameter_value(
                f"wait_ready_timeout must be > 0 seconds, got {self.wait_ready_timeout}."
            )
        for size in self.preferred_batch_size:
            if not 1 <= size <= max(self.max_batch_size, 1):
                raise MlflowException.invalid_parameter_value(
                    f"preferred_batch_size {size} must be between 1 and max_batch_size "
                    f"({self.max_batch_size})."
                )
        if self.s3_endpoint_url is not None:
            try:
                parsed = urlparse(self.s3_endpoint_url)
            except ValueError:  # e.g. an unclosed '[' of an IPv6 address
                parsed = urlparse("")
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise MlflowException.invalid_parameter_value(
                    f"s3_endpoint_url must look like http(s)://host:port, got "
                    f"{self.s3_endpoint_url!r}."
                )

    def require_repository(self) -> str:
        if not self.model_repository:
            raise MlflowException.invalid_parameter_value(
                "No model repository configured. Pass -C model_repository=s3://bucket/prefix "
                "(or a local directory), or set TRITON_MODEL_REPO."
            )
        return self.model_repository


def _with_suggestions(unknown: list[str], valid: list[str]) -> str:
    """``'instance_knd' (did you mean 'instance_kind'?), 'foo'``: the closest valid key of each
    unknown one, when one is close enough (difflib's default similarity cutoff, 0.6)."""
    described = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        described.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    return ", ".join(described)


_BOOL_WORDS = {"1": "true", "yes": "true", "on": "true", "true": "true",
               "0": "false", "no": "false", "off": "false", "false": "false"}  # fmt: skip


def _convert(key: str, value: Any, annotation: Any) -> Any:
    kind = str(annotation)
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("list"):
            if isinstance(value, str):
                text = value.strip()
                value = json.loads(text) if text.startswith("[") else text.split(",") if text else []
            return [int(v) for v in value]
        return str(value)
    except (TypeError, ValueError) as err:
        raise MlflowException.invalid_parameter_value(
            f"Config key {key!r} expects {kind}, got {value!r}."
        ) from err


def _choice(key: str, value: str | None, allowed: tuple[str, ...], optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in allowed:
        raise MlflowException.invalid_parameter_value(
            f"Config key {key!r} must be one of {', '.join(allowed)}; got {value!r}."
        )


def _at_least(key: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise MlflowException.invalid_parameter_value(
            f"Config key {key!r} must be >= {minimum}, got {value}."
        )
