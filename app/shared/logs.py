"""Logging set-up for the service: plain or one JSON object per line; uvicorn's loggers go through the same root."""

from __future__ import annotations

import json
import logging
import time

from app.shared.observability import RequestIdFilter


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class PlainFormatter(logging.Formatter):
    """`time level logger: message`, with `[request <id>]` on lines written for a request."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{line} [request {rid}]" if rid else line


def configure_logging(level: str, json_logs: bool) -> None:
    """Configure the root logger once; uvicorn's own handlers are removed so every line has one format."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())  # every line written while a request is handled names it
    handler.setFormatter(JsonFormatter() if json_logs else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class ExceptionLog:
    """Log an unexpected exception with its traceback at most once per `period_s` for each kind (type and place);
    between those, one line. A client that triggers the same bug in every request then costs one line per request,
    not a traceback each (a 1.1 KB request once wrote 452 KB of log)."""

    def __init__(self, logger: logging.Logger, period_s: float = 60.0) -> None:
        self.logger = logger
        self.period_s = period_s
        self._last: dict[tuple[str, str], float] = {}

    def __call__(self, message: str, exc: BaseException) -> None:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
        key = (type(exc).__name__, where)
        now = time.monotonic()
        if now - self._last.get(key, -self.period_s) >= self.period_s:
            if len(self._last) > 1000:  # bounded: many distinct bugs at once still cost a fixed amount of memory
                self._last.clear()
            self._last[key] = now
            self.logger.error("%s", message, exc_info=exc)
        else:
            detail = str(exc).splitlines()[0][:200] if str(exc) else ""
            self.logger.error("%s: %s: %s (traceback logged within the last %.0f s)", message, type(exc).__name__, detail, self.period_s)
