"""One masking rule for every place a credential could leave the process.

What is masked, in any text (a URL alone, or inside an error message or a log line):

* the userinfo of every URL: ``http://user:pass@host`` -> ``http://***@host`` (tracking and
  registry URIs, Triton URLs, S3 endpoints, webhook URLs);
* the value of every URL query parameter whose name looks like a credential: it contains
  ``key``, ``secret``, ``token``, ``password``/``passwd``/``pwd``, ``signature``,
  ``credential`` or ``auth``, or is ``sig`` (``?token=...``, ``X-Amz-Signature=...``,
  ``X-Amz-Credential=...``): the name stays, the value becomes ``***``;
* in free text (an error message), the value of ``name=value`` when the name cannot mean
  anything but a credential (``password=``, ``secret=``, ``token=``, ``api_key=``,
  ``aws_secret_access_key=``...); not ``signature=`` (MLflow's model signature) nor ``key=``.

Masking is idempotent and happens at the boundaries, not where messages are written:

* :func:`mask_secrets` for one string, :func:`mask_data` for a returned structure (the
  plugin's ``get``/``list``/``create`` results, CLI reports, metrics labels, tags);
* :func:`scrub_exception` for an exception leaving the plugin or the CLI: the messages of the
  exception and of everything it chains are masked in place, so its type (what callers decide
  on) and its traceback stay;
* :class:`MaskingFilter` on log handlers (the daemons' and CLI's, see
  :mod:`mlflow_triton.daemons.log_format`), and :func:`install_log_masking` for this package's
  own log records whatever handlers the host process configured (``mlflow deployments``,
  a notebook).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"
#: Loggers whose records :func:`install_log_masking` masks at creation.
OWN_LOGGERS = ("mlflow_triton", "lightning_callbacks")

# scheme://user:password@host -> scheme://***@host (also inside error text). The look-behinds
# let a match start only where a scheme or a name starts and the names are bounded, so the
# time stays linear in the text's length (a log line of 64 KB of letters included).
_USERINFO = re.compile(r"(?<![A-Za-z0-9+.\-])(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]{0,31}://)[^/\s@?#]+@")
# ?token=...&X-Amz-Signature=...: in a URL query, every credential-like name. In free text
# ("(password=...)" in an error) only names that cannot be anything else: "signature=" there
# is MLflow's model signature ("signature=infer_signature(x, y)") and "key=value" a placeholder.
_QUERY_NAMES = r"(?:key|secret|token|password|passwd|pwd|signature|credential|auth)"
_TEXT_NAMES = r"(?:password|passwd|pwd|secret|token|credential|access[_-]?key|api[_-]?key|private[_-]?key)"
_VALUE = r"[^&\s#),;'\"]*"
_QUERY_PARAM = re.compile(
    rf"(?P<key>(?<=[?&;])(?:[\w.\-]{{0,40}}?{_QUERY_NAMES}[\w.\-]{{0,40}}|sig)=){_VALUE}", re.IGNORECASE
)
_TEXT_PARAM = re.compile(rf"(?P<key>(?<![\w.\-])[\w.\-]{{0,40}}?{_TEXT_NAMES}[\w.\-]{{0,40}}=){_VALUE}", re.IGNORECASE)
#: How deep :func:`mask_data` walks nested containers.
_DEPTH_LIMIT = 8
#: Exception attributes that are C-level slots (not in ``__dict__``) and may hold display text.
_SLOT_ATTRIBUTES = ("strerror", "filename", "filename2", "msg", "reason")


def mask_secrets(text: str) -> str:
    """``text`` with credentials in URIs masked: userinfo and credential-like query values."""
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    return _TEXT_PARAM.sub(rf"\g<key>{MASK}", _QUERY_PARAM.sub(rf"\g<key>{MASK}", text))


def mask_data(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with every string in it masked (dict keys included).

    Dicts, lists and tuples are walked (to a depth of 8); other values are returned as is.
    """
    if isinstance(value, str):
        return mask_secrets(value)
    if _depth >= _DEPTH_LIMIT:
        return value
    if isinstance(value, dict):
        return {mask_data(k, _depth + 1): mask_data(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_data(v, _depth + 1) for v in value)
    return value


def scrub_exception(err: BaseException) -> BaseException:
    """Mask, in place, the text of ``err`` and of every exception it chains; returns ``err``.

    Walks ``__cause__``, ``__context__`` and exceptions held in ``args`` (``requests`` wraps
    urllib3's). For each: string ``args`` and string attributes are masked, and any other
    argument whose text would show a credential is replaced by its masked text. The type and
    the traceback are kept, so callers still decide by type and a traceback still points at
    the failing line.
    """
    pending: list[BaseException | None] = [err]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen or len(seen) > 64:
            continue
        seen.add(id(current))
        pending += [current.__cause__, current.__context__]
        pending += [arg for arg in current.args if isinstance(arg, BaseException)]
        _scrub_one(current)
    return err


def _scrub_one(err: BaseException) -> None:
    try:
        err.args = tuple(_masked_arg(arg) for arg in err.args)
    except (TypeError, AttributeError):
        pass
    for name, value in list(getattr(err, "__dict__", {}).items()):
        if isinstance(value, str) and mask_secrets(value) != value:
            try:
                setattr(err, name, mask_secrets(value))
            except (TypeError, AttributeError):
                pass
    for name in _SLOT_ATTRIBUTES:
        value = getattr(err, name, None)
        if isinstance(value, str) and mask_secrets(value) != value:
            try:
                setattr(err, name, mask_secrets(value))
            except (TypeError, AttributeError):
                pass
    notes = getattr(err, "__notes__", None)
    if isinstance(notes, list):
        notes[:] = [mask_secrets(n) if isinstance(n, str) else n for n in notes]


def _masked_arg(arg: Any) -> Any:
    if isinstance(arg, str):
        return mask_secrets(arg)
    if isinstance(arg, BaseException):
        return arg  # scrubbed in its own turn
    try:
        text = str(arg)
    except Exception:
        return arg
    masked = mask_secrets(text)
    return arg if masked == text else masked


def mask_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask one log record in place: its message, exception and stack text."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: the handler reports it as usual
        return record
    masked = mask_secrets(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and record.exc_info[1] is not None:
        scrub_exception(record.exc_info[1])
    if record.exc_text:
        record.exc_text = mask_secrets(record.exc_text)
    if record.stack_info:
        record.stack_info = mask_secrets(record.stack_info)
    return record


class MaskingFilter(logging.Filter):
    """A handler filter that masks every record it lets through (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record)
        return True


_install_lock = threading.Lock()
_installed = False


def install_log_masking() -> None:
    """Mask the records of this package's loggers (:data:`OWN_LOGGERS`) when they are created.

    Handler filters only help where we own the handler; the plugin logs through whatever the
    host process configured (MLflow's CLI, a notebook, a user's service). Wrapping the log
    record factory masks our records before any handler sees them and leaves every other
    logger's records untouched. Idempotent.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def masked_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if record.name.split(".", 1)[0] in OWN_LOGGERS:
                mask_record(record)
            return record

        logging.setLogRecordFactory(masked_factory)
        _installed = True
