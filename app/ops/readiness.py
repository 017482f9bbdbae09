"""Whether this API process can serve answers now: what /readyz reports to the load balancer.

Each component is checked at once, concurrently, and counts as down when it fails or does not answer within
`limits.readiness_timeout_s`; blocking checks run in a thread that is abandoned on timeout, so a hung
database or Milvus delays the probe by the timeout and no more.

- database, Milvus and the embedder: without any of them no question can be answered, so the process is
  `unavailable` (503) and leaves rotation;
- the model server and the ingestion worker: answers fall back to extractive ones, and queued jobs wait, so
  the process is `degraded` (200) and stays in rotation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from anyio import to_thread
from sqlalchemy import text
from sqlalchemy.engine import Engine

from retrieval.openai_embedder import OpenAIEmbedder

log = logging.getLogger(__name__)

Status = Literal["ready", "degraded", "unavailable"]
# A check answers whether its component is up; None when the process has no such component (no worker).
Check = Callable[[], Awaitable[bool | None]]

# Answers need these: any one down and the process is unavailable.
ESSENTIAL = frozenset({"database", "milvus", "embedder"})


@dataclass(frozen=True)
class Report:
    components: dict[str, bool]

    @property
    def status(self) -> Status:
        if any(not up for name, up in self.components.items() if name in ESSENTIAL):
            return "unavailable"
        return "ready" if all(self.components.values()) else "degraded"

    def named(self) -> dict[str, Literal["up", "down"]]:
        return {name: "up" if up else "down" for name, up in self.components.items()}


class Readiness:
    def __init__(self, checks: Mapping[str, Check], *, timeout_s: float) -> None:
        self._checks = dict(checks)
        self._timeout_s = timeout_s
        # What each component was at the last probe: a change is logged, a steady state is not (probes come
        # every few seconds).
        self._last: dict[str, bool] = {}

    async def check(self) -> Report:
        names = list(self._checks)
        results = await asyncio.gather(*(self._one(name) for name in names))
        return Report({name: up for name, up in zip(names, results, strict=True) if up is not None})

    async def _one(self, name: str) -> bool | None:
        reason = ""
        try:
            up = await asyncio.wait_for(self._checks[name](), self._timeout_s)
        except TimeoutError:
            up, reason = False, f"no answer within {self._timeout_s:g} s"
        except Exception as exc:  # noqa: BLE001 - whatever failed, the component is down; the log says why
            up, reason = False, f"{type(exc).__name__}: {exc}"
        if up is not None and self._last.get(name) != up:
            if up:
                log.info("readiness: %s is up", name)
            elif name in self._last or reason:
                log.warning("readiness: %s is down%s", name, f" ({reason})" if reason else "")
            self._last[name] = up
        return up


@dataclass(frozen=True)
class Components:
    """What an API process's checks look at, each fetched when a probe runs: until `warmed_up()` the
    database, Milvus and the embedder count as down, so that a probe never opens or loads one itself."""

    warmed_up: Callable[[], bool]
    engine: Callable[[], Engine]
    store: Callable[[], Pingable]
    embedder: Callable[[], object]
    generator: Callable[[], ModelServer]
    worker: Callable[[], Supervised | None]


def component_checks(components: Components, *, timeout_s: float) -> dict[str, Check]:
    """The checks of an API process."""
    c = components

    async def database() -> bool:
        if not c.warmed_up():
            return False
        await to_thread.run_sync(_select_one, c.engine(), abandon_on_cancel=True)
        return True

    async def milvus() -> bool:
        if not c.warmed_up():
            return False
        await to_thread.run_sync(c.store().ping, timeout_s, abandon_on_cancel=True)
        return True

    async def embedder() -> bool:
        if not c.warmed_up():
            return False
        model = c.embedder()
        if isinstance(model, OpenAIEmbedder):
            # A separate embedding service: it must still answer. A model in this process is loaded.
            await to_thread.run_sync(model.ping, timeout_s, abandon_on_cancel=True)
        return True

    async def llm() -> bool:
        return await c.generator().ready()

    async def ingestion_worker() -> bool | None:
        supervisor = c.worker()
        return None if supervisor is None else supervisor.up

    return {"database": database, "milvus": milvus, "embedder": embedder, "llm": llm, "worker": ingestion_worker}


class Pingable(Protocol):
    def ping(self, timeout_s: float) -> None: ...


class Supervised(Protocol):
    """A supervised thread (app.worker.WorkerSupervisor): whether it is running now."""

    @property
    def up(self) -> bool: ...


class ModelServer(Protocol):
    async def ready(self) -> bool: ...


def _select_one(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
