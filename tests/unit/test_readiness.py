"""Readiness from its checks: which components make the instance unavailable or only degraded, and that a
check that hangs or fails costs the timeout, not the probe."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.ops.readiness import Check, Readiness, Report


def up() -> Check:
    async def check() -> bool:
        return True

    return check


def down() -> Check:
    async def check() -> bool:
        return False

    return check


def hangs(seconds: float) -> Check:
    async def check() -> bool:
        await asyncio.sleep(seconds)
        return True

    return check


def blocks(seconds: float) -> Check:
    # A blocking driver call in a thread, as the database and Milvus checks make.
    async def check() -> bool:
        from anyio import to_thread

        await to_thread.run_sync(time.sleep, seconds, abandon_on_cancel=True)
        return True

    return check


def fails() -> Check:
    async def check() -> bool:
        raise ConnectionRefusedError("connection refused")

    return check


def absent() -> Check:
    async def check() -> None:
        return None

    return check


ALL_UP = {"database": True, "milvus": True, "embedder": True, "llm": True, "worker": True}


@pytest.mark.parametrize(
    ("down_ones", "status"),
    [
        ((), "ready"),
        (("llm",), "degraded"),
        (("worker",), "degraded"),
        (("llm", "worker"), "degraded"),
        (("database",), "unavailable"),
        (("milvus",), "unavailable"),
        (("embedder",), "unavailable"),
        (("milvus", "llm"), "unavailable"),
    ],
)
def test_status_by_what_is_down(down_ones: tuple[str, ...], status: str) -> None:
    report = Report({name: name not in down_ones for name in ALL_UP})
    assert report.status == status
    assert report.named() == {name: "down" if name in down_ones else "up" for name in ALL_UP}


def test_a_check_that_hangs_fails_or_blocks_is_down_within_the_timeout() -> None:
    readiness = Readiness(
        {"database": blocks(5), "milvus": hangs(5), "embedder": fails(), "llm": up(), "worker": absent()},
        timeout_s=0.3,
    )
    started = time.monotonic()
    report = asyncio.run(readiness.check())
    elapsed = time.monotonic() - started
    # Concurrently: the probe took one timeout, not one per slow check; the absent worker is not reported.
    assert elapsed < 1.5, elapsed
    assert report.components == {"database": False, "milvus": False, "embedder": False, "llm": True}
    assert report.status == "unavailable"


def test_checks_run_concurrently() -> None:
    readiness = Readiness({name: blocks(0.4) for name in ("database", "milvus", "embedder")}, timeout_s=2)
    started = time.monotonic()
    report = asyncio.run(readiness.check())
    assert report.status == "ready" and time.monotonic() - started < 1.0


def test_a_change_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    state = {"up": True}

    async def milvus() -> bool:
        return state["up"]

    readiness = Readiness({"milvus": milvus, "llm": up()}, timeout_s=1)
    with caplog.at_level("INFO", logger="app.ops.readiness"):
        for flips in (True, False, False, False, True, True):
            state["up"] = flips
            asyncio.run(readiness.check())
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "readiness: milvus is up", "readiness: llm is up", "readiness: milvus is down", "readiness: milvus is up"
    ]  # fmt: skip
