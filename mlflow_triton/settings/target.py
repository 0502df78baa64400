"""Target URIs of the ``triton`` deployment target: the Triton replicas and the target's options.

    urls = parse_target_uri("triton:/http://t1:8000,http://t2:8000")
    options = target_options("triton:/http://t1:8000?repository=s3://models/triton")
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlparse

from mlflow.exceptions import MlflowException

from mlflow_triton.fleet.discovery import check_discovery_url, is_discovery_url

DEFAULT_TRITON_URL = "http://localhost:8000"
TARGET_NAME = "triton"


def parse_target_uri(target_uri: str) -> list[str]:
    """Triton HTTP(S) or gRPC URLs named by a ``triton`` target URI.

    ``triton`` reads ``TRITON_URL`` (default ``http://localhost:8000``); ``triton:/URL[,URL...]``
    names the servers explicitly. Several URLs are replicas fed by one repository;
    ``dns+http://NAME:PORT`` stands for every address of NAME (:mod:`mlflow_triton.fleet.discovery`).
    A ``?repository=...`` query is an option of the target (:func:`target_options`), not a URL.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for any other form.
    """
    expected = (
        "'triton', 'triton:/http://host:port[,http://host2:port]' or "
        "'triton:/dns+http://name:port' (every address of name)"
    )
    if target_uri == TARGET_NAME:
        spec = os.environ.get("TRITON_URL", DEFAULT_TRITON_URL)
    elif target_uri.startswith(f"{TARGET_NAME}:/"):
        spec = target_uri[len(TARGET_NAME) + 2 :]
    else:
        raise MlflowException.invalid_parameter_value(
            f"Invalid target URI {target_uri!r}: expected {expected}."
        )
    spec = spec.partition("?")[0]  # options: see target_options
    urls = [url.strip().rstrip("/") for url in spec.split(",") if url.strip()]
    if not urls:
        raise MlflowException.invalid_parameter_value(
            f"Target URI {target_uri!r} names no Triton server: expected {expected}."
        )
    for url in urls:
        try:
            parsed = urlparse(url)
        except ValueError as err:  # e.g. an unclosed '[' of an IPv6 address
            raise MlflowException.invalid_parameter_value(
                f"Invalid Triton URL {url!r} in target {target_uri!r} ({err}): expected "
                "http://host:port (or grpc://host:port)."
            ) from err
        if is_discovery_url(url):
            check_discovery_url(url)
            continue
        if parsed.scheme not in ("http", "https", "grpc") or not parsed.hostname:
            raise MlflowException.invalid_parameter_value(
                f"Invalid Triton URL {url!r} in target {target_uri!r}: expected "
                "http://host:port (or grpc://host:port)."
            )
        try:
            _ = parsed.port  # raises for a port that is not a number
        except ValueError as err:
            raise MlflowException.invalid_parameter_value(
                f"Invalid port in Triton URL {url!r}."
            ) from err
    return urls


#: ``triton:/URL?KEY=VALUE`` options of a target URI and the DeploymentConfig key each sets.
TARGET_OPTIONS = {"repository": "model_repository", "s3_endpoint_url": "s3_endpoint_url"}


def target_options(target_uri: str) -> dict[str, str]:
    """The DeploymentConfig values a target URI carries in its query, e.g.
    ``triton:/http://t1:8000?repository=s3://models/triton`` -> ``{"model_repository": ...}``.

    MLflow's ``list`` and ``get`` take no ``-C``: this is how they learn the repository
    without ``TRITON_MODEL_REPO``.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for an unknown option.
    """
    if target_uri == TARGET_NAME or "?" not in target_uri:
        return {}
    query = target_uri.partition("?")[2]
    options = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in TARGET_OPTIONS:
            raise MlflowException.invalid_parameter_value(
                f"Unknown option {key!r} in target URI {target_uri!r}: valid options are "
                f"{', '.join(TARGET_OPTIONS)} (e.g. triton:/http://host:8000?repository=s3://bucket/prefix)."
            )
        options[TARGET_OPTIONS[key]] = value
    return options
