"""The rate limiter on its in-process store (the Redis case runs in tests/integration/test_limits.py)."""

from __future__ import annotations

import asyncio

import pytest

from app.access.principal import Principal, anonymous
from app.access.roles import Role
from app.errors import RateLimited, ServiceUnavailable
from app.ops.limits import AnswerSlots
from app.ops.ratelimit import RateLimiter
from app.settings import RateLimitSettings, RoleRate
from core.procs import free_port
from core.types import Usage


def limiter(**roles: RoleRate) -> RateLimiter:
    return RateLimiter(RateLimitSettings(**roles))


def key(key_id: str, role: Role = Role.employee) -> Principal:
    return Principal(key_id=key_id, name=key_id, role=role, kbs=("default",))


def test_requests_over_the_role_rate_are_refused_per_key() -> None:
    rl = limiter(employee=RoleRate(requests_per_minute=3), admin=RoleRate(requests_per_minute=10))
    for _ in range(3):
        rl.hit_request(key("a"), "10.0.0.1")
    with pytest.raises(RateLimited) as refused:
        rl.hit_request(key("a"), "10.0.0.1")
    assert 1 <= refused.value.retry_after_s <= 60
    assert refused.value.headers["Retry-After"] == str(refused.value.retry_after_s)
    rl.hit_request(key("b"), "10.0.0.1")  # another key, same address: its own budget
    for _ in range(10):
        rl.hit_request(key("boss", Role.admin), None)


def test_callers_without_a_key_are_counted_by_address() -> None:
    rl = limiter(anonymous=RoleRate(requests_per_minute=1))
    nobody = anonymous(["default"])
    rl.hit_request(nobody, "10.0.0.1")
    rl.hit_request(nobody, "10.0.0.2")
    with pytest.raises(RateLimited):
        rl.hit_request(nobody, "10.0.0.1")


def test_tokens_are_charged_after_the_answer_and_refuse_the_next_one() -> None:
    rl = limiter(employee=RoleRate(tokens_per_minute=100))
    caller = key("a")
    asyncio.run(rl.require_tokens_async(caller, None))
    asyncio.run(rl.charge_usage(caller, None, Usage(prompt_tokens=60, completion_tokens=10)))
    rl.require_tokens(caller, None)  # 30 left
    # An answer that overran what was left still spends the rest of the budget.
    asyncio.run(rl.charge_usage(caller, None, Usage(prompt_tokens=500, completion_tokens=500)))
    with pytest.raises(RateLimited, match="token") as refused:
        rl.require_tokens(caller, None)
    assert 1 <= refused.value.retry_after_s <= 60
    rl.require_tokens(key("b"), None)
    # The request budget is separate.
    rl.hit_request(caller, None)


def test_disabled_limits_refuse_nothing() -> None:
    rl = RateLimiter(RateLimitSettings(enabled=False, employee=RoleRate(requests_per_minute=1, tokens_per_minute=1)))
    for _ in range(5):
        rl.hit_request(key("a"), None)
        rl.charge_tokens(key("a"), None, 1000)
        rl.require_tokens(key("a"), None)


def test_an_unreachable_redis_refuses_rather_than_lets_through() -> None:
    rl = RateLimiter(RateLimitSettings(), storage_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ServiceUnavailable):
        rl.hit_request(key("a"), None)


def test_answer_slots_refuse_beyond_capacity_and_release_once() -> None:
    slots = AnswerSlots(1)
    slot = slots.take()
    with pytest.raises(Exception, match="already being produced") as refused:
        slots.take()
    assert getattr(refused.value, "status_code", None) == 503
    slot.release()
    slot.release()
    assert slots.in_flight == 0
    with slots.take():
        assert slots.in_flight == 1
    assert slots.in_flight == 0
