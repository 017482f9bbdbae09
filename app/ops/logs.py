"""Structured (JSON) logs on stderr, so stdout stays free for `--json` results."""

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


def configure_logging(level: str = "INFO") -> None:
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "jieba", "filelock", "sentence_transformers", "multipart"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Third-party banners and progress bars would land on stdout or clutter stderr.
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
