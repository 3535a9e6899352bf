"""Logging: event lines as readable text (the default) or as one JSON object per line (`logging.format: json`),
so that a log shipper parses everything the gateway writes to stderr. The JSON request lines have their own
writer (gateway.request_log) and are the same in both formats.

A JSON event line: `{"ts", "event": "log", "level", "logger", "message"}`, plus `request_id` (and `trace_id`,
`span_id`) when it is written while a request is served, and `exc_info` (the traceback as one string) when it
carries an exception. Messages and tracebacks are redacted as prompts are (gateway.observe.redact): keys and
tokens never reach a log line. uvicorn's loggers get the same format (`uvicorn_options`), and so do Python's
warnings and uncaught exceptions.
"""

from __future__ import annotations

import copy
import logging
import sys
import threading
from types import TracebackType
from typing import Any

import orjson

from gateway import request_log, tracing

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line. (`use_colors`, which uvicorn may hand its formatters, is
    ignored.)"""

    def __init__(self, *args: Any, use_colors: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        from gateway.observe import current_request_id, redact  # imported late: observe brings the metrics

        line: dict[str, Any] = {"ts": round(record.created, 3), "event": "log", "level": record.levelname.lower(),
                                "logger": record.name, "message": redact(record.getMessage())}
        request_id = current_request_id.get()
        if request_id is not None:
            line["request_id"] = request_id
        ids = tracing.log_ids()
        if ids is not None:
            line["trace_id"] = ids[0]
            if ids[1] is not None:
                line["span_id"] = ids[1]
        if record.exc_info:
            line["exc_info"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exc_info"] = redact(record.exc_text)
        if record.stack_info:
            line["stack_info"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(line, default=str).decode()


def configure(level: str = "info", json_requests: bool = True, fmt: str = "text") -> None:
    """The root logger's format and level (the gateway's own loggers and the libraries'); `fmt` "json" also
    sends Python's warnings and uncaught exceptions through it."""
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root = logging.getLogger()
        for old in root.handlers[:]:
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(level.upper())
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_uncaught
    else:
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
    request_log.configure(json_requests)


def uvicorn_options(fmt: str = "text") -> dict[str, Any]:
    """uvicorn's `log_config` for the format: its own (coloured text) for "text", the same loggers and streams
    with the JSON formatter for "json"."""
    if fmt != "json":
        return {}
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"] = {name: {"()": "gateway.logsetup.JsonFormatter"} for name in config["formatters"]}
    return {"log_config": config}


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("llm_gateway").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread else "?"
    logging.getLogger("llm_gateway").critical("uncaught exception in thread %s", name,
                                              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
