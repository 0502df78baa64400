"""``-C config_override``: a user's ``ModelConfig`` fragment merged into the generated config.

Users set anything Triton supports this way (priority, queue policy, response cache, rate
limiter, model transaction policy, backend parameters) without a new ``-C`` key::

    text = load_override("dynamic_batching { priority_levels: 2 default_priority_level: 1 }")
    merge_override(generated, parse_override(text))

The rules:

* The value is a file path when it names an existing file, else inline pbtxt text. A value
  that cannot be pbtxt (no ``:``, ``{`` or ``<``) and names no file is refused as a missing file.
* It must parse as a ``ModelConfig`` (``text_format``); a parse error names its line and
  column. Nothing is written before it parses.
* ``name`` and ``version_policy`` are the plugin's (the deployment name, and the pin that makes
  a verified version serve): an override that sets them is refused, never silently ignored.
* Merge: protobuf ``MergeFrom`` (scalars and sub-messages set in the override win, the rest of
  the generated config stays), except that a repeated field set in the override *replaces* the
  generated list (``instance_group``, ``model_warmup``, ``input``...). Map fields
  (``parameters``) merge key by key, so the plugin's ``mlflow_triton.tensor_names`` survives an
  override that adds backend parameters.
* The override is stored in its canonical text form (parsed, then printed), which provenance
  records: the same override is a no-op, a changed one publishes a new version.
"""

from __future__ import annotations

import os
import re

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from mlflow.exceptions import MlflowException
from tritonclient.grpc import model_config_pb2 as mc

__all__ = ["OWNED_FIELDS", "load_override", "merge_override", "parse_override"]

#: Fields the plugin writes itself; an override may not set them.
OWNED_FIELDS = ("name", "version_policy")
_PBTXT_MARKS = (":", "{", "<")


def load_override(value: str | None) -> str | None:
    """The canonical pbtxt of a ``config_override`` value (a file path or inline text).

    Returns:
        The override printed by ``text_format`` (stable for provenance), or None when empty.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for a missing file, a parse error (with its
            line and column), or a field the plugin owns.
    """
    if value is None or not str(value).strip():
        return None
    value = str(value)
    if os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as handle:
                text, origin = handle.read(), f"config_override file {value!r}"
        except (OSError, UnicodeDecodeError) as err:
            raise MlflowException.invalid_parameter_value(
                f"Cannot read the config_override file {value!r}: {err}."
            ) from err
    elif not any(mark in value for mark in _PBTXT_MARKS):
        raise MlflowException.invalid_parameter_value(
            f"config_override {value!r} is neither an existing file nor pbtxt text. Pass the path "
            "of a config.pbtxt fragment, or inline text such as 'optimization { priority: PRIORITY_MAX }'."
        )
    else:
        text, origin = value, "config_override"
    message = parse_override(text, origin)
    return text_format.MessageToString(message) or None


def parse_override(text: str, origin: str = "config_override") -> mc.ModelConfig:
    """Parse override text as a ``ModelConfig`` and refuse the fields the plugin owns.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE naming the line, column and field.
    """
    try:
        message = text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as err:
        line, column = err.GetLine(), err.GetColumn()
        where = f"line {line}, column {column}" if line is not None else "its text"
        reason = re.sub(r"^\d+:\d+ : ", "", str(err)).rstrip(".")
        raise MlflowException.invalid_parameter_value(
            f"{origin} is not a valid Triton ModelConfig at {where}: {reason}. It must be "
            "config.pbtxt syntax (model_config.proto), e.g. 'dynamic_batching { "
            "default_queue_policy { timeout_action: REJECT } }'."
        ) from err
    owned = [field.name for field, _ in message.ListFields() if field.name in OWNED_FIELDS]
    if owned:
        raise MlflowException.invalid_parameter_value(
            f"{origin} sets {', '.join(owned)}, which the plugin owns (the deployment name, and "
            "the version pin that makes a verified version serve). Remove them: the name is the "
            "deployment name and versions are published with `mlflow deployments update`."
        )
    return message


def merge_override(base: Message, override: Message) -> Message:
    """Merge ``override`` into ``base`` in place (see the module docstring) and return ``base``."""
    for field, value in override.ListFields():
        target = getattr(base, field.name)
        if _is_map(field):
            target.MergeFrom(value)
        elif _is_repeated(field):
            base.ClearField(field.name)
            getattr(base, field.name).extend(value)
        elif field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            target.SetInParent()  # an empty block in the override (`response_cache {}`) counts
            merge_override(target, value)
        else:
            setattr(base, field.name, value)
    return base


def _is_repeated(field: FieldDescriptor) -> bool:
    return field.label == FieldDescriptor.LABEL_REPEATED


def _is_map(field: FieldDescriptor) -> bool:
    return (
        _is_repeated(field)
        and field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
    )
