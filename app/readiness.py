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
from typing import TYPE_CHECKING, Literal

from anyio import to_thread
from sqlalchemy import text

from retrieval.openai_embedder import OpenAIEmbedder

if TYPE_CHECKING:
    from app.container import Container
    from app.worker import WorkerSupervisor

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


def container_checks(
    container: Container, *, worker: Callable[[], WorkerSupervisor | None], timeout_s: float
) -> dict[str, Check]:
    """The checks of an API process built from `container`. Before `warm_up` has run, nothing is opened
    and the database, Milvus and the embedder count as down: a probe never loads a model itself."""

    async def database() -> bool:
        if not container.warmed_up:
            return False
        await to_thread.run_sync(_select_one, container, abandon_on_cancel=True)
        return True

    async def milvus() -> bool:
        if not container.warmed_up:
            return False
        await to_thread.run_sync(container.store.ping, timeout_s, abandon_on_cancel=True)
        return True

    async def embedder() -> bool:
        if not container.warmed_up:
            return False
        model = container.embedder
        if isinstance(model, OpenAIEmbedder):
            # A separate embedding service: it must still answer. A model in this process is loaded.
            await to_thread.run_sync(model.ping, timeout_s, abandon_on_cancel=True)
        return True

    async def llm() -> bool:
        return await container.generator.ready()

    async def ingestion_worker() -> bool | None:
        supervisor = worker()
        return None if supervisor is None else supervisor.up

    return {"database": database, "milvus": milvus, "embedder": embedder, "llm": llm, "worker": ingestion_worker}


def _select_one(container: Container) -> None:
    with container.registry.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
