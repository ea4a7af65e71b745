"""Logging: plain text by default, one JSON object per line with LOG_FORMAT=json.

Events worth a dashboard (call start/end, turn, barge-in, errors) are logged with `extra={"event": ...,
"call_id": ...}`; the JSON formatter puts those fields at the top level of the line.

Text lines escape control characters (a newline or NUL in a client-chosen id would otherwise forge a line);
phone numbers are masked at INFO (`masked_number`), in full only at DEBUG.
"""

from __future__ import annotations

import json
import logging
import time

#: C0 control characters and DEL, written as escapes in text logs (`\n`, `\x00`): one log call, one line.
_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(32), 127]} | {10: "\\n", 13: "\\r", 9: "\\t"}

#: Fields a log call may pass in `extra` that belong in the structured line.
EVENT_FIELDS = ("event", "call_id", "transport", "reason", "seconds", "turns", "barge_ins", "calls", "error", "code")


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            line["worker"] = self.worker
        for name in EVENT_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """The text format, with control characters in the message escaped (tracebacks stay as they are)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        escaped = logging.makeLogRecord(record.__dict__)
        escaped.message = record.message.translate(_CONTROLS)
        return super().formatMessage(escaped)


def masked_number(number: str) -> str:
    """A phone number as INFO logs show it: its last four digits (`***0100`); enough to tell calls apart."""
    return "***" + number[-4:].translate(_CONTROLS) if len(number) > 4 else "***"


def configure_logging(level: str, fmt: str = "text", worker: int | None = None) -> None:
    """`worker`: with WORKERS > 1, every line says which worker process wrote it."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        tag = f" [worker {worker}]" if worker is not None else ""
        handler.setFormatter(TextFormatter(f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
