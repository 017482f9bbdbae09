"""Rate limits per API key: requests per minute and model tokens per minute, by role.

Built once at start-up from Settings and kept on `app.state`. Counters live in this process
(`memory://`) or, with `redis.url` set, in Redis, so that every API process behind a load balancer
draws from the same budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from anyio import to_thread
from fastapi import Request
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from app.access.principal import Principal
from app.access.roles import Role
from app.errors import RateLimited, ServiceUnavailable
from app.settings import RateLimitSettings, RoleRate, Settings
from core.types import Usage

# Redis that does not answer must not hold requests for long: the caller gets a 503 instead (fail closed).
_REDIS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class _Budget:
    requests: RateLimitItem
    tokens: RateLimitItem


class RateLimiter:
    """Per key (anonymous callers: per client IP), two budgets that refill continuously.

    `limits` has no token bucket; its sliding window counter is the closest: the budget comes back
    gradually as the previous minute's use ages out (weighted by how much of it is still inside the
    last 60 s) instead of all at once at a window boundary, so a key cannot spend two minutes' worth
    across a boundary, which a fixed window allows. It keeps two counters per key whatever the cost of
    a hit, where the moving window stores one entry per unit; charging thousands of tokens per answer
    would make that grow by thousands of entries a minute per key.
    """

    def __init__(
        self, settings: RateLimitSettings, *, storage_url: str = "memory://",
        on_refused: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        """`on_refused(role)` is told of every refusal (Metrics.observe_rate_limited: kb_rate_limited_total)."""
        self.enabled = settings.enabled
        self._on_refused = on_refused
        options: dict[str, float] = {}
        if storage_url.startswith(("redis://", "rediss://", "redis+unix://")):
            options = {"socket_timeout": _REDIS_TIMEOUT_S, "socket_connect_timeout": _REDIS_TIMEOUT_S}
        self._storage = storage_from_string(storage_url, wrap_exceptions=True, **options)
        self._strategy = SlidingWindowCounterRateLimiter(self._storage)
        self._budgets = {role: _budget(getattr(settings, role.value)) for role in Role}

    @classmethod
    def from_settings(cls, settings: Settings, on_refused: Callable[[str], None] | None = None) -> RateLimiter:
        storage_url = settings.redis.url.get_secret_value() or "memory://"
        return cls(settings.rate_limits, storage_url=storage_url, on_refused=on_refused)

    def _refused(self, principal: Principal, message: str, item: RateLimitItem, kind: str, who: str) -> RateLimited:
        if self._on_refused is not None:
            self._on_refused(principal.role.value)
        return RateLimited(message, retry_after_s=self._retry_after(item, kind, who))

    # -- requests (every authenticated call) ---------------------------------------------------
    def hit_request(self, principal: Principal, ip: str | None) -> None:
        """Count one request; RateLimited when the key's requests-per-minute are spent."""
        if not self.enabled:
            return
        item, who = self._budgets[principal.role].requests, identity(principal, ip)
        with _store_errors():
            if not self._strategy.hit(item, "requests", who):
                raise self._refused(
                    principal, f"too many requests: {item.amount} per minute for this key", item, "requests", who
                )

    # -- model tokens (answers) ------------------------------------------------------------------
    def require_tokens(self, principal: Principal, ip: str | None) -> None:
        """RateLimited when the key has no model tokens left this minute (checked before answering)."""
        if not self.enabled:
            return
        item, who = self._budgets[principal.role].tokens, identity(principal, ip)
        with _store_errors():
            if not self._strategy.test(item, "tokens", who):
                raise self._refused(
                    principal, f"model token budget spent: {item.amount} tokens per minute for this key", item,
                    "tokens", who,
                )  # fmt: skip

    def charge_tokens(self, principal: Principal, ip: str | None, tokens: int) -> None:
        """Take what an answer used from the key's token budget, after the answer."""
        if not self.enabled or tokens <= 0:
            return
        item, who = self._budgets[principal.role].tokens, identity(principal, ip)
        # `hit` refuses (and charges nothing) when the cost exceeds what is left, yet an answer that
        # overran the budget was still produced: charge what is left so that the next request waits.
        # A concurrent charge may shrink what is left between the two calls, hence the retries.
        with _store_errors():
            for _ in range(3):
                left = self._strategy.get_window_stats(item, "tokens", who).remaining
                if left <= 0 or self._strategy.hit(item, "tokens", who, cost=min(tokens, left)):
                    return

    async def require_tokens_async(self, principal: Principal, ip: str | None) -> None:
        await to_thread.run_sync(self.require_tokens, principal, ip)

    async def charge_usage(self, principal: Principal, ip: str | None, usage: Usage) -> None:
        await to_thread.run_sync(self.charge_tokens, principal, ip, usage.prompt_tokens + usage.completion_tokens)

    def _retry_after(self, item: RateLimitItem, kind: str, who: str) -> int:
        # The sliding window's reset time is when one more unit comes free.
        stats = self._strategy.get_window_stats(item, kind, who)
        return max(1, math.ceil(stats.reset_time - time.time()))

    def close(self) -> None:
        close = getattr(self._storage, "close", None)
        if callable(close):
            close()


def _budget(rate: RoleRate) -> _Budget:
    return _Budget(
        requests=RateLimitItemPerMinute(rate.requests_per_minute, namespace="kb"),
        tokens=RateLimitItemPerMinute(rate.tokens_per_minute, namespace="kb"),
    )


def identity(principal: Principal, ip: str | None) -> str:
    """Whose budget a request draws from: the key, or for callers without one their address."""
    if principal.key_id:
        return f"key:{principal.key_id}"
    return f"ip:{ip or 'unknown'}"


def rate_limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.rate_limiter
    return limiter


@contextmanager
def _store_errors() -> Iterator[None]:
    # Without its store the limiter cannot tell who is over: refuse (fail closed) rather than let all through.
    try:
        yield
    except StorageError as exc:
        raise ServiceUnavailable("the rate limit store is unavailable; try again shortly") from exc
