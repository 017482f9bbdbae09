"""What the OpenAI-protocol clients (the generator, the embeddings backend) treat as worth a retry."""

from __future__ import annotations

from openai import APIConnectionError, APITimeoutError


def is_connection_error(exc: BaseException) -> bool:
    """A refused or dropped connection is worth another try (a server restarting, a pod rescheduled); a
    timeout is not: retrying it would multiply the wait past the timeout the caller configured."""
    return isinstance(exc, APIConnectionError) and not isinstance(exc, APITimeoutError)
