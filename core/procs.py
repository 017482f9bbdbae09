"""Process and port checks shared by the launchers (Milvus Lite, vLLM), the job workers and the tests."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, for a server started a moment later. Chosen below the kernel's ephemeral
    range: a port from bind(0) is one the kernel hands out again to the next bind(0) or outgoing connection
    of any process (vLLM and torch pick their internal ports that way), and a server that starts slowly
    then finds its port taken."""
    top = _ephemeral_range()[0] - 1
    bottom = max(1024, top - 20000)
    for _ in range(100 if top > bottom else 0):
        port = random.randint(bottom, top)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
