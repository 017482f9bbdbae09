"""The retry rule of kb's OpenAI-protocol clients (the generator, the embeddings backend).

Retries are kb's, not the SDK's (which would also retry 5xx and timeouts and so hide a slow server
behind several full timeouts): connection errors only, bounded by attempts and by the timeout.
"""

from __future__ import annotations

import logging
from typing import Any

from openai import APIConnectionError, APITimeoutError
from tenacity import before_sleep_log, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential


def is_connection_error(exc: BaseException) -> bool:
    """A refused or dropped connection is worth another try (a server restarting, a pod rescheduled); a
    timeout is not: retrying it would multiply the wait past the timeout the caller configured."""
    return isinstance(exc, APIConnectionError) and not isinstance(exc, APITimeoutError)


def retry_policy(*, retries: int, timeout_s: float, backoff_s: float, log: logging.Logger) -> dict[str, Any]:
    """Keyword arguments for tenacity's `Retrying` or `AsyncRetrying`, the same rule for both."""
    return {
        "retry": retry_if_exception(is_connection_error),
        "stop": stop_after_attempt(retries + 1) | stop_after_delay(timeout_s),
        "wait": wait_exponential(multiplier=backoff_s, max=4.0),
        "before_sleep": before_sleep_log(log, logging.WARNING),
        "reraise": True,
    }
