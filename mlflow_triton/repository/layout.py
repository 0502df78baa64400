"""The repository's layout: every folder and file name the plugin reads or writes, in one place.

Deployment ``NAME`` is Triton's model folder plus files of ours that Triton ignores::

    <repo>/NAME/config.pbtxt                     version_policy pins the serving version
    <repo>/NAME/<N>/model.onnx | model.pt | ...  what Triton serves (the flavor decides)
    <repo>/NAME/<N>/mlflow-triton.json           provenance (mlflow_triton.repository.provenance)
    <repo>/NAME/<N>/.mlflow-triton.claim         version number claimed before the first byte
    <repo>/NAME/<N>/mlflow-triton.logged-config.pbtxt   a triton-flavor model's config as logged
    <repo>/NAME/<N>/mlflow-triton.reference/     inputs and outputs it was verified with
    <repo>/NAME/warmup/<N>/input_<i>             model_warmup data (mlflow_triton.triton_config.warmup)
    <repo>/NAME/mlflow-triton-history.json       serving history (mlflow_triton.repository.history)
    <repo>/NAME/.mlflow-triton.lease             held while a publisher writes (mlflow_triton.repository.lease)
    <repo>/_mlflow-triton-staging.NAME/          a candidate loaded for verification, never served

Deployment names are checked by :func:`validate_model_name` before they become keys.
"""

from __future__ import annotations

import re

from mlflow.exceptions import MlflowException

CONFIG_FILE = "config.pbtxt"
PROVENANCE_FILE = "mlflow-triton.json"
HISTORY_FILE = "mlflow-triton-history.json"
LEASE_FILE = ".mlflow-triton.lease"
#: Created with a conditional write in a version folder before its first byte: the claim.
CLAIM_FILE = ".mlflow-triton.claim"
#: A triton-flavor model's config.pbtxt as logged, kept in its version folder.
LOGGED_CONFIG_FILE = "mlflow-triton.logged-config.pbtxt"
#: Reference outputs of a verified version, inside its folder (mlflow_triton.repository.references).
REFERENCE_FOLDER = "mlflow-triton.reference"
#: Triton's folder for warmup data inside a model directory (``kWarmupDataFolder``).
WARMUP_FOLDER = "warmup"
#: Staging models are named ``_mlflow-triton-staging.NAME``; no deployment name starts with '_'.
STAGING_PREFIX = "_mlflow-triton-staging."

# Triton accepts any directory name, but a name must also be a safe S3 key segment and a URL path
# segment for the HTTP API: letters, digits, '_', '-', '.'; starts with a letter or digit.
# Checked with fullmatch: with match, '$' would also accept a trailing newline ("fraud\n").
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def validate_model_name(name: str | None) -> str:
    """Return ``name`` if it is a safe Triton model name, else raise INVALID_PARAMETER_VALUE."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise MlflowException.invalid_parameter_value(
            f"Invalid deployment name {name!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (no '/', no '..'), e.g. 'fraud-detector'."
        )
    return name


def is_deployment_name(folder: str) -> bool:
    """Whether a repository folder can be a deployment (staging models and others cannot)."""
    return bool(_MODEL_NAME.fullmatch(folder)) and ".." not in folder


def version_prefix(name: str, version: int) -> str:
    """The prefix of one version folder: ``NAME/<N>/``."""
    return f"{name}/{version}/"


def warmup_prefix(name: str, version: int) -> str:
    """The prefix of one version's warmup files: ``NAME/warmup/<N>/``."""
    return f"{name}/{WARMUP_FOLDER}/{version}/"


def staging_name(name: str) -> str:
    """The Triton model name a candidate of ``name`` is verified under."""
    return f"{STAGING_PREFIX}{name}"
