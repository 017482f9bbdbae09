"""A kb home that several processes share (a `milvus-lite server`, as `kb up` runs it) and a real API
process (`kb serve`) on it: for the tests of the integrations (OpenAI-compatible endpoint, MCP) that
talk to kb the way internal tools do, over HTTP or by launching `kb mcp --stdio`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.container import lite_layout
from app.settings import Settings
from core.procs import free_port
from retrieval.milvus_connect import start_lite_server
from tests.servers import stop, wait_until_ready

KB = str(Path(sys.executable).parent / "kb")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class KbHome:
    settings: Settings
    env: dict[str, str]

    @property
    def home(self) -> Path:
        return self.settings.home


@contextmanager
def shared_home(home: Path, models_dir: Path, **env: str) -> Iterator[KbHome]:
    """KB_HOME with a running `milvus-lite server`, so that the test's own Container, the API process and
    `kb mcp --stdio` all open the same data; `env` (KB_* variables) applies to every kb process started."""
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KB_")},
        # The checkout under test, whichever checkout the virtual environment was installed from.
        "PYTHONPATH": str(ROOT), "KB_HOME": str(home), "KB_MODELS_DIR": str(models_dir), "HF_HUB_OFFLINE": "1",
        "KB_RERANKER__ENABLED": "false", "KB_INGEST__WORKER_IN_API": "false", "KB_API__UI_ENABLED": "false",
        **env,
    }  # fmt: skip
    settings = Settings(
        home=home, models_dir=models_dir, reranker={"enabled": False},  # type: ignore[arg-type]
        ingest={"worker_in_api": False}, api={"ui_enabled": False},  # type: ignore[arg-type]
    )  # fmt: skip
    milvus = start_lite_server(lite_layout(settings))
    try:
        yield KbHome(settings=settings, env=full_env)
    finally:
        stop(milvus, timeout_s=30)


@dataclass(frozen=True)
class ApiProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@contextmanager
def api_process(kb_home: KbHome, timeout_s: float = 300.0) -> Iterator[ApiProcess]:
    """`kb serve` on a free port of 127.0.0.1; stopped by its PID at the end."""
    port = free_port()
    log = kb_home.home / f"api-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [KB, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=kb_home.env, cwd=kb_home.home, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, f"{url}/healthz", log, timeout_s=timeout_s, what="kb serve")
        yield ApiProcess(url=url, proc=proc, log=log)
    finally:
        stop(proc)
