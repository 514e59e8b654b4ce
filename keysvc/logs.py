"""Logging: one JSON object a line (or text for people), with the request id.

Chosen once, at the entry point. As a last line of defence, anything shaped
like a keysvc token is masked before a line is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar

from aiohttp.http_exceptions import HttpProcessingError

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_TOKEN = re.compile(r"ks(?:cl|vf|ad)_[A-Za-z0-9_-]{20,}")
# Attributes every LogRecord has; anything else was passed in ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _mask(text: str) -> str:
    return _TOKEN.sub(lambda m: m.group(0)[:5] + "***", text)


class JsonFormatter(logging.Formatter):
    """One JSON object a line; written with the access log in mind, which
    formats a line for every request at INFO."""

    _encode = json.JSONEncoder(default=str).encode

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _ts(self, created: float) -> str:
        # The date and time change once a second; only the milliseconds move.
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        millis = min(999, int((created - second) * 1000))

        return f"{self._stamp}.{millis:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self._ts(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": _mask(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        fields = record.__dict__
        for name in sorted(fields.keys() - _STANDARD):
            if not name.startswith("_"):
                entry[name] = fields[name]
        if record.exc_info:
            entry["exc_info"] = _mask(self.formatException(record.exc_info))

        return self._encode(entry)


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse at ERROR, with a traceback that
    quotes the offending line, which may hold a credential: keep one line at
    INFO that names the fault and quotes nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        fault = record.exc_info[1] if record.exc_info else None
        if isinstance(fault, HttpProcessingError):
            record.msg = "refused a malformed HTTP request (%s, status %s)"
            record.args = (type(fault).__name__, fault.code)
            record.exc_info = record.exc_text = None
            if record.levelno > logging.INFO:
                record.levelno, record.levelname = logging.INFO, "INFO"

        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = _mask(super().format(record))
        request_id = request_id_var.get()

        return f"{line} [{request_id}]" if request_id else line


def setup_logging(log_format: str, level: str) -> None:
    # Neither format shows the caller's file and line, thread or process: not
    # looking them up saves a third of the cost of a line (logging HOWTO,
    # "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())
    for noisy in ("apscheduler", "pgserver", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
