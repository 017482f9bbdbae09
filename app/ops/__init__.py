"""Running kb: metrics, tracing, logs, readiness, request ids, request limits and rate limits."""
