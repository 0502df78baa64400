"""``--log-format json``: one JSON object per log line, for log collectors (Loki, Cloud Logging).

Built on :mod:`logging` alone: :class:`JsonFormatter` serializes the record's time (UTC,
ISO 8601), level, logger, message (arguments applied) and exception, plus any ``extra=``
fields a caller attached. Nothing else is added, so no secret reaches the logs that the text
format would not show.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Format each record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Send logs to stderr as text (default) or JSON lines (a process's entry point calls it once).

    In JSON mode every stderr line must parse, so MLflow's own logger (its own text handler,
    not propagating) is routed through the root handler, Python warnings go through logging,
    and MLflow's artifact progress bars (tqdm, written straight to stderr) are turned off.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if log_format == "json":
        from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

        mlflow_logger = logging.getLogger("mlflow")
        mlflow_logger.handlers = [handler]
        logging.captureWarnings(True)
        os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"
