"""Run ASGI apps with uvicorn in a background thread, on 127.0.0.1 and a free port (browser tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from core.procs import free_port


@contextmanager
def serve_in_thread(app: Any, *, ready_path: str = "/") -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"test server on {url} did not start")
        time.sleep(0.05)
    httpx.get(url + ready_path, timeout=30, follow_redirects=True)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
