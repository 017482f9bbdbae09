"""Ports for servers the launchers and tests start."""

from __future__ import annotations

import socket

import pytest

from core import procs
from core.procs import _ephemeral_range, free_port


def test_free_ports_are_bindable_and_outside_the_kernels_ephemeral_range() -> None:
    low, _ = _ephemeral_range()
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports), ports
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        taken = free_port()
        held.bind(("127.0.0.1", taken))
        held.listen()
        other = free_port()
        picks = iter([taken, taken, other])
        monkeypatch.setattr(procs.random, "randint", lambda a, b: next(picks))
        assert procs.free_port() == other
