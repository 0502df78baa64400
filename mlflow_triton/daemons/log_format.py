"""Log output of the daemons and the CLI: text or JSON lines, credentials masked, floods bounded.

``--log-format json`` writes one JSON object per line, for log collectors (Loki, Cloud
Logging). Built on :mod:`logging` alone: :class:`JsonFormatter` serializes the record's time
(UTC, ISO 8601), level, logger, message (arguments applied) and exception, plus any
``extra=`` fields a caller attached.

Every line, text or JSON, from any logger (ours, MLflow's, botocore's, uvicorn's), passes one
:class:`~mlflow_triton.core.masking.MaskingFilter` on the handler that
:func:`configure_logging` installs: userinfo and credential-like query values in URLs are
masked (:mod:`mlflow_triton.core.masking`), in messages, exceptions and extra fields alike.

Text that a client controls (a webhook's delivery id, a model name from an event) goes
through :func:`loggable`: control characters escaped, length bounded, so a request cannot
forge log lines or write 64 KB into one. :class:`RateLimitedLog` bounds lines that a client
can trigger at will (refused deliveries).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Literal

from mlflow_triton.core.masking import MaskingFilter, install_log_masking, mask_data, mask_secrets

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
#: Characters of client-controlled text kept in a log line (see :func:`loggable`).
LOGGABLE_CHARS = 120


class JsonFormatter(logging.Formatter):
    """Format each record as one line of JSON (credentials masked)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = mask_secrets(self.formatException(record.exc_info))
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = _masked_field(value)
        return json.dumps(entry, default=lambda value: mask_secrets(str(value)))


def _masked_field(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (str, dict, list, tuple)):
        return mask_data(value)
    return mask_secrets(str(value))


class MaskingTextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT` lines, masked as a whole (exception and stack text included)."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


def configure_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Send logs to stderr as text (default) or JSON lines (a process's entry point calls it once).

    One handler, with the masking filter, serves every logger. MLflow's logger (its own text
    handler, not propagating) is routed through it too, so MLflow's lines are masked and, in
    JSON mode, parse. In JSON mode Python warnings go through logging and MLflow's artifact
    progress bars (tqdm, written straight to stderr) are turned off.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else MaskingTextFormatter(TEXT_FORMAT))
    handler.addFilter(MaskingFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
    install_log_masking()
    logging.getLogger("mlflow").handlers = [handler]
    if log_format == "json":
        from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

        logging.captureWarnings(True)
        os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"


def loggable(value: Any, limit: int = LOGGABLE_CHARS) -> str:
    """``value`` as it may appear in a log line: control and non-ASCII characters escaped
    (``\\n``, ``\\x1b``, ``\\u202e``), credentials masked, cut to ``limit`` characters with
    the original length noted."""
    text = value if isinstance(value, str) else repr(value)
    escaped = mask_secrets(text.encode("unicode_escape").decode("ascii"))
    if len(escaped) <= limit:
        return escaped
    return f"{escaped[:limit]}...({len(text)} chars)"


class RateLimitedLog:
    """Logs at most ``burst`` lines per ``period_s``; the lines beyond are counted, and the
    next line that passes says how many were suppressed. Thread-safe.

    Args:
        logger: where the lines go.
        burst: lines per period.
        period_s: the period.
        clock: monotonic seconds (tests).

    Example::

        refusals = RateLimitedLog(logger, burst=10, period_s=60)
        refusals.log(logging.WARNING, "Rejected webhook (%d): %s", 403, reason)
    """

    def __init__(
        self, logger: logging.Logger, burst: int = 10, period_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.logger = logger
        self.burst = burst
        self.period_s = period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._passed = 0
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless the period's budget is spent; returns whether it was."""
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self.period_s:
                self._window_start, self._passed = now, 0
            if self._passed >= self.burst:
                self._suppressed += 1
                return False
            self._passed += 1
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            msg += " (%d similar lines suppressed before this one)"
            args = (*args, suppressed)
        self.logger.log(level, msg, *args)
        return True
