"""Every log record of a process as one JSON line on stderr: the app's workers and serve.py alike, so that an
operator's pipeline reads one format (gunicorn's own messages keep its plain format).

Kept free of Flask and the models: serve.py, which lives as long as the container, imports it too.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every ``extra`` field of the record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Send every log record of the process to stderr as a JSON line (once per process)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(isinstance(handler.formatter, JsonFormatter) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
