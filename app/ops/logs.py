"""Logs on stderr, so stdout stays free for `--json` results: one JSON object per line for files and log
collectors, readable lines on a terminal (`log_format`)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from opentelemetry import trace
from opentelemetry.trace import format_span_id, format_trace_id

# The attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line; fields passed as `log.info(..., extra={"request_id": ...})` become keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class HumanFormatter(logging.Formatter):
    """`12:03:04 info  kb.access: request method=POST path=/ask status=200` for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(
            f"{key}={value}" for key, value in vars(record).items() if key not in _STANDARD and key != "span_id"
        )
        line = f"{stamp} {record.levelname.lower():<7} {record.name}: {record.getMessage()}"
        line = f"{line} {fields}" if fields else line
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class TraceContextFilter(logging.Filter):
    """Adds `trace_id` and `span_id` to every record written inside a traced span (app/ops/tracing.py), so that
    a log line leads to its trace; nothing when tracing is off."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = format_trace_id(context.trace_id)
            record.span_id = format_span_id(context.span_id)
        return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time, so a swapped stream (test runners) is never stale."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """`fmt`: json, text, or auto (text when stderr is a terminal)."""
    handler = _StderrHandler(sys.stderr)
    human = fmt == "text" or (fmt == "auto" and sys.stderr.isatty())
    handler.setFormatter(HumanFormatter() if human else JSONFormatter())
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "jieba", "filelock", "sentence_transformers", "multipart"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # jieba sets its own logger to DEBUG and gives it a handler of its own when it is first imported,
    # whatever was configured before; a filter on the logger outlives that.
    jieba = logging.getLogger("jieba")
    if _below_warning not in jieba.filters:
        jieba.addFilter(_below_warning)
    # Third-party banners and progress bars would land on stdout or clutter stderr.
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
