"""What only the reactor engine can get wrong: edge-triggered readiness and half-closed peers.

The reactor registers each socket once, edge-triggered, and stops reading after a short read. A
peer whose last bytes and FIN arrive before the relay reads them gives one event only: the relay
must read on to the end of file (EPOLLRDHUP) instead of waiting for an event that never comes.
Each test sends its bytes and shuts down its side without yielding to the relay in between, so
both are there before the relay's first read. The same tests run on the tasks engine too.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from tests.relay_helpers import new_tunnel_id, running_relay, upgrade_request
from tests.relay_process import masked_frame

ENGINES = ["reactor", "tasks"]


def _connected(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def _read_to_eof(sock: socket.socket, timeout: float) -> bytes:
    """Everything the relay sends until it closes; fails after ``timeout`` seconds."""
    data = b""
    with trio.fail_after(timeout):
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


async def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            await trio.lowlevel.wait_readable(sock)
            try:
                data += sock.recv(65536)
            except BlockingIOError:
                continue
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _routing_id(head: bytes) -> str:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-cable-routing-id":
            return value.strip().decode()
    raise AssertionError(head)


@pytest.mark.parametrize("engine", ENGINES)
async def test_half_a_head_then_eof_is_given_up_at_once(engine):
    async with running_relay(host="127.0.0.1", port=0, engine=engine, handshake_timeout=5) as relay:
        sock = _connected(relay.port)
        try:
            sock.send(b"GET /cable/new/" + new_tunnel_id().encode() + b" HTTP/1.1\r\nHost: x\r\n")
            sock.shutdown(socket.SHUT_WR)
            # Judged at the end of file (h11: an incomplete request is 400), well before the 5 s
            # handshake timeout would answer 408.
            answer = await _read_to_eof(sock, timeout=2)
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert relay.stats.refusals["handshake_timeout"] == 0


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_last_message_and_eof_together_end_the_tunnel_at_once(engine):
    async with running_relay(host="127.0.0.1", port=0, engine=engine) as relay:
        tunnel_id = new_tunnel_id()
        phone = _connected(relay.port)
        desktop = None
        try:
            phone.send(upgrade_request(f"/cable/new/{tunnel_id}"))
            head, _ = await _read_head(phone)
            assert head.startswith(b"HTTP/1.1 101")
            desktop = _connected(relay.port)
            desktop.send(upgrade_request(f"/cable/connect/{_routing_id(head)}/{tunnel_id}"))
            head, rest = await _read_head(desktop)
            assert head.startswith(b"HTTP/1.1 101")
            # The phone's last message and its FIN, with no close frame, before the relay reads.
            phone.send(masked_frame(b"last words"))
            phone.shutdown(socket.SHUT_WR)
            received = rest + await _read_to_eof(desktop, timeout=2)
        finally:
            phone.close()
            if desktop is not None:
                desktop.close()
        events = _server_frames(received)
        assert events[0] == (0x2, b"last words")
        assert events[1][0] == 0x8 and int.from_bytes(events[1][1][:2], "big") == 1001
        assert relay.stats.tunnel_closes["authenticator_gone"] == 1


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in ``data``."""
    frames = []
    pos = 0
    while pos + 2 <= len(data):
        opcode = data[pos] & 0x0F
        length = data[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            length = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        elif length == 127:
            length = int.from_bytes(data[pos : pos + 8], "big")
            pos += 8
        frames.append((opcode, data[pos : pos + length]))
        pos += length
    return frames


async def test_the_relay_fixture_runs_the_reactor():
    async with running_relay(host="127.0.0.1", port=0) as relay:
        assert relay.engine == "reactor"
        assert relay.reactor is not None


async def test_finished_connections_leave_nothing_in_the_timer_heap():
    """The heap's entries are (deadline, key) pairs; a finished connection drops its key, so no
    connection outlives its socket through a deadline still pending (under load that held every
    connection of the last few minutes, and their buffers)."""
    from tests.relay_helpers import open_tunnel

    async with running_relay(host="127.0.0.1", port=0) as relay:
        reactor = relay.reactor
        assert reactor is not None
        for _ in range(20):
            async with open_tunnel(relay) as tunnel:
                await tunnel.authenticator.send_message(b"ping")
                assert await tunnel.initiator.get_message() == b"ping"
        with trio.fail_after(5):
            while reactor.connections:
                await trio.sleep(0.01)
        assert reactor._timed == {}
        assert all(len(entry) == 2 and type(entry[1]) is int for entry in reactor._timers)
        # Entries of finished connections come off the top before the reactor waits, so its
        # wait is bounded by a live deadline, not by a close timeout long over: none is left.
        with trio.fail_after(5):
            while reactor._timers:
                await trio.sleep(0.01)


async def test_the_reactor_reads_trios_clock_the_fast_way_and_any_other_clock_as_is():
    from relay.reactor import _fast_clock

    system = trio.lowlevel.current_clock()
    now = _fast_clock(system)
    assert now is not system.current_time  # trio's own clock: computed in the reactor
    before = system.current_time()
    between = now()
    assert before <= between <= system.current_time()
    mock = trio.testing.MockClock()
    assert _fast_clock(mock) == mock.current_time
