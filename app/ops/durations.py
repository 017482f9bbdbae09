"""Durations ("90d", "12h", "30m") and moments ("1h" ago, or an ISO time) as the CLI and the API take them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match or int(match[1]) == 0:
        raise ValueError(f"{text!r} is not a duration like 90d, 12h or 30m")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_moment(text: str, *, now: datetime | None = None) -> datetime:
    """A duration means that long before now ("1h"); anything else is an ISO time, UTC unless it says."""
    text = text.strip()
    if _DURATION.match(text):
        return (now or datetime.now(UTC)) - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration like 1h, 2d, 30m nor a time like 2026-11-28T00:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
