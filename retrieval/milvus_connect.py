"""Connecting to Milvus: a remote URI, or the embedded Milvus Lite data folder under KB_HOME.

A Milvus Lite data folder can be open in one process only. `kb up` therefore runs it as a
`milvus-lite server` on 127.0.0.1 and records the endpoint in `run/milvus-lite.json`; every kb process
(API, CLI) finds that file and connects over gRPC. Without a running server a process opens the folder
itself.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pymilvus import MilvusClient

from core.procs import free_port, pid_alive, port_open

log = logging.getLogger(__name__)

ENDPOINT_FILE = "milvus-lite.json"


class MilvusUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class LiteLayout:
    data_dir: Path
    run_dir: Path

    @property
    def endpoint_file(self) -> Path:
        return self.run_dir / ENDPOINT_FILE


def running_lite_uri(layout: LiteLayout) -> str | None:
    """The URI of a live `milvus-lite server` for this data folder, if one is running."""
    try:
        info = json.loads(layout.endpoint_file.read_text())
    except (OSError, ValueError):
        return None
    if info.get("data_dir") != str(layout.data_dir) or not pid_alive(int(info.get("pid", 0))):
        return None
    if not port_open(info["host"], int(info["port"])):
        return None
    return f"http://{info['host']}:{info['port']}"


def start_lite_server(
    layout: LiteLayout, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60
) -> subprocess.Popen[bytes]:
    """Start `milvus-lite server` for the data folder (bound to loopback) and wait until it listens."""
    port = port or free_port(host)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = layout.run_dir / "milvus-lite.log"
    cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(layout.data_dir),
           "--host", host, "--port", str(port)]  # fmt: skip
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise MilvusUnavailable(f"milvus-lite server exited with {proc.returncode}:\n{tail}")
        if port_open(host, port):
            layout.endpoint_file.write_text(
                json.dumps({"pid": proc.pid, "host": host, "port": port, "data_dir": str(layout.data_dir)})
            )
            log.info("milvus-lite server for %s on %s:%d (pid %d)", layout.data_dir, host, port, proc.pid)
            return proc
        time.sleep(0.2)
    proc.kill()
    raise MilvusUnavailable(f"milvus-lite server did not listen on {host}:{port} within {timeout_s:.0f}s")


def open_client(
    *, uri: str, token: str, db_name: str, layout: LiteLayout, timeout_s: float | None = None
) -> MilvusClient:
    """A client for the configured Milvus; `timeout_s` bounds connecting (MilvusStore bounds each call)."""
    if uri:
        kwargs: dict[str, str] = {"uri": uri}
        if token:
            kwargs["token"] = token
        if db_name:
            kwargs["db_name"] = db_name
        return MilvusClient(**kwargs, timeout=timeout_s)
    shared = running_lite_uri(layout)
    if shared is not None:
        return MilvusClient(uri=shared, timeout=timeout_s)
    layout.data_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        return MilvusClient(uri=str(layout.data_dir), timeout=timeout_s)
    except Exception as exc:
        raise MilvusUnavailable(
            f"cannot open {layout.data_dir}: {exc}. Another process may hold it; "
            "start the stack with `kb up` so that every kb command shares one Milvus Lite server."
        ) from exc
