"""The one seam between kb's stages and their traces.

`stage(timings, name)` times a stage into the `timings` dict that answers carry and the per-stage latency
histogram observes (app/ops/metrics.py), and opens an OpenTelemetry span of the same name around it. The spans
go through opentelemetry-api only: until the application installs an SDK tracer provider (app/ops/tracing.py,
`KB_TRACING__ENABLED`) they are non-recording and cost next to nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span

# The OpenTelemetry idiom: a proxy that follows whichever provider is installed, whenever it is.
tracer = trace.get_tracer("kb")


@contextmanager
def stage(timings: dict[str, float], name: str, *, current: bool = True) -> Iterator[Span]:
    """Time `name` into `timings[f"{name}_ms"]` and trace it as a span `name`.

    A stage that raises ends its span with the error and records no time: callers read a missing timing as
    "did not happen" (an unavailable reranker, say). Time adds up when a stage runs more than once. With
    `current=False` the span is not made the current one: for a stage that spans the yields of an async
    generator, where the context that entered it is not the one that leaves."""
    started = time.perf_counter()
    if current:
        with tracer.start_as_current_span(name) as span:
            yield span
    else:
        span = tracer.start_span(name)
        try:
            yield span
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, str(exc))
            raise
        finally:
            span.end()
    key = f"{name}_ms"
    timings[key] = timings.get(key, 0.0) + (time.perf_counter() - started) * 1000
