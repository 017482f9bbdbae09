"""Ports for servers the launchers and tests start."""

from __future__ import annotations

import socket

from core.procs import _ephemeral_range, free_port


def test_free_ports_are_bindable_and_outside_the_kernels_ephemeral_range() -> None:
    low, _ = _ephemeral_range()
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports), ports
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_offered() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert taken not in {free_port() for _ in range(50)}
