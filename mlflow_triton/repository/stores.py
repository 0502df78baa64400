"""Choosing the store of a repository URI: ``s3://bucket/prefix`` or a local directory."""

from __future__ import annotations

from urllib.parse import urlparse

from mlflow.exceptions import MlflowException

from mlflow_triton.repository.artifacts import local_path
from mlflow_triton.repository.local_store import LocalStore
from mlflow_triton.repository.s3_store import S3Store
from mlflow_triton.repository.store import ModelRepositoryStore


def open_store(uri: str, endpoint_url: str | None = None) -> ModelRepositoryStore:
    """The store for ``uri``: ``s3://bucket/prefix`` or a local directory path.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for any other URI scheme.
    """
    try:
        parsed = urlparse(uri)
        if parsed.scheme == "s3":
            return S3Store(uri, endpoint_url=endpoint_url)
        local = local_path(uri)
        if local is not None:
            return LocalStore(local)
    except (ValueError, RuntimeError) as err:  # unclosed "[", NUL byte, "~nosuchuser"
        raise MlflowException.invalid_parameter_value(
            f"Invalid model repository {uri!r}: {err}. Use s3://bucket/prefix or a local directory."
        ) from err
    raise MlflowException.invalid_parameter_value(
        f"Unsupported model repository {uri!r}: use s3://bucket/prefix or a local directory "
        "(gs:// and as:// repositories are not supported yet)."
    )


