"""Logging to stdout: one readable line per event, or one JSON object per line (LOG_FORMAT=json)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from app.settings import Settings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def formatter(settings: Settings) -> logging.Formatter:
    if settings.log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(
    settings: Settings, *, stream: TextIO | None = None, level: int | str | None = None
) -> None:
    """Route the application's loggers to stdout (the container log) in the chosen format, at
    ``level`` when one is given (Celery's ``-l``), else at LOG_LEVEL."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter(settings))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level if level is None else level)
    for noisy in ("urllib3", "twilio.http_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
