"""Logging: plain text by default, one JSON object per line with LOG_FORMAT=json.

Events worth a dashboard (call start/end, turn, barge-in, errors) are logged with `extra={"event": ...,
"call_id": ...}`; the JSON formatter puts those fields at the top level of the line.
"""

from __future__ import annotations

import json
import logging
import time

#: Fields a log call may pass in `extra` that belong in the structured line.
EVENT_FIELDS = ("event", "call_id", "transport", "reason", "seconds", "turns", "barge_ins", "calls", "error", "code")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
