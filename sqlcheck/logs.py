"""Logging for operators: one line per event, ``job=<id> task=<id>`` in the message."""

from __future__ import annotations

import json
import logging
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line (SQLCHECK_LOG_FORMAT=json), for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class TextLineFormatter(logging.Formatter):
    """The text format (SQLCHECK_LOG_FORMAT=text). A message stays on its line even when it quotes
    an uploaded name holding a newline (which could otherwise forge a log line); a traceback,
    when there is one, still follows on lines of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.replace("\r", "\\r").replace("\n", "\\n")
        return super().formatMessage(record)


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonLineFormatter() if log_format == "json" else TextLineFormatter(TEXT_FORMAT)


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Configure the root logger once, for the CLI and for worker processes."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # sqlfluff logs whole parse trees at INFO: far too much for an operator's log.
    logging.getLogger("sqlfluff").setLevel(logging.WARNING)
