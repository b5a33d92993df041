"""Log lines as JSON objects, one a line, for log shippers: ``LOOK_LOG_FORMAT=json``."""

from __future__ import annotations

import datetime
import json
import logging

from gunicorn import glogging


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, pid, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, object] = {
            'time': moment.isoformat(timespec='milliseconds'),
            'level': record.levelname.lower(),
            'logger': record.name,
            'pid': record.process,
            'message': record.getMessage(),
        }
        if record.exc_info:
            entry['exception'] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class JsonLogger(glogging.Logger):
    """gunicorn's logger, writing JSON lines (``logger_class`` in gunicorn.conf.py).

    Every gunicorn setting about logs (where, level, whether there is an
    access log) keeps its meaning; only the lines change.
    """

    def _set_handler(
        self, log: logging.Logger, output: str, fmt: logging.Formatter, stream: object = None
    ) -> None:
        super()._set_handler(log, output, JsonFormatter(), stream)
