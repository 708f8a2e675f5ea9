"""The tests' own port allocator (tests/peers.py): the CI failure it exists for was a port
found free with bind(0), closed, and taken by a client connection before the server bound it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests import peers

ROOT = Path(__file__).resolve().parent.parent


def test_ports_are_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    low = peers._ephemeral_low()
    ports = [peers.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(peers.PORTS_LOW <= p < min(peers.PORTS_HIGH, low) for p in ports)
    # what the kernel hands a client connection comes from the other range
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as client:
        assert client.getsockname()[1] >= low


def test_a_port_somebody_holds_is_skipped() -> None:
    nxt = peers._PORTS.ports[peers._PORTS.cursor]
    with socket.socket() as held:
        held.bind(("127.0.0.1", nxt))
        held.listen()
        assert peers.free_port() != nxt
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        nxt = peers._PORTS.ports[peers._PORTS.cursor]
        held.bind(("127.0.0.1", nxt))
        assert peers.free_port() != nxt


def test_a_block_with_a_held_port_is_skipped() -> None:
    start = peers._PORTS.ports[peers._PORTS.cursor]
    with socket.socket() as held:
        held.bind(("127.0.0.1", start + 2))  # the middle of the next block of five
        held.listen()
        base = peers.free_ports(5)
    assert not base <= start + 2 < base + 5


def test_two_xdist_workers_have_slices_that_do_not_meet() -> None:
    code = "from tests import peers; r = peers._slice(); print(r.start, r.stop)"
    slices = []
    for worker in ("gw0", "gw1", "gw2", "gw3"):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, text=True,
                             capture_output=True, env={"PYTEST_XDIST_WORKER": worker,
                                                       "PATH": "/usr/bin:/bin"}).stdout
        start, stop = map(int, out.split())
        slices.append(range(start, stop))
    for i, a in enumerate(slices):
        for b in slices[i + 1:]:
            assert not set(a) & set(b)
