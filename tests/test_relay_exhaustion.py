"""Cheap exhaustion with idle /cable/new sockets (issue 12, point 10), over real sockets.

Waiting tunnels are bounded per client and per /24, so ten addresses can no longer fill the node;
near the tunnel limit, tunnels that sent nothing wait only ``pressure_wait_timeout`` (oldest
first) and honest tunnels get in; the default ``max_tunnels`` is sized from memory.
"""

from __future__ import annotations

import trio
from relay_helpers import connect_url, new_tunnel_id, open_ws, running_relay
from relay_process import masked_frame, raw_ws, read_close_code

from relay.config import (
    MAX_DEFAULT_MAX_TUNNELS,
    MIN_DEFAULT_MAX_TUNNELS,
    WAITING_TUNNEL_BYTES,
    RelayConfig,
    default_max_tunnels,
)


async def _hold(port: int, source: str, held: list) -> int:
    stream, status, headers = await raw_ws(port, f"/cable/new/{new_tunnel_id()}", source=source)
    if status == 101:
        held.append((stream, headers))
    else:
        await stream.aclose()
    return status


async def test_waiting_tunnels_are_bounded_per_address_and_per_network():
    async with running_relay(max_waiting_per_address=5, max_waiting_per_network=8) as relay:
        held: list = []
        try:
            statuses = [await _hold(relay.port, "127.0.0.2", held) for _ in range(6)]
            assert statuses == [101] * 5 + [429]
            # Another address of the same /24 shares the network quota: 3 more, then 429.
            statuses = [await _hold(relay.port, "127.0.0.3", held) for _ in range(4)]
            assert statuses == [101] * 3 + [429]
            # Another /24 is not affected.
            assert await _hold(relay.port, "127.0.1.2", held) == 101
            assert relay.stats.refusals["waiting_limit"] == 2
        finally:
            for stream, _ in held:
                await stream.aclose()
        # Closed tunnels give their quota back.
        await trio.sleep(0.2)
        more: list = []
        try:
            assert await _hold(relay.port, "127.0.0.2", more) == 101
        finally:
            for stream, _ in more:
                await stream.aclose()


async def test_pairing_gives_the_waiting_quota_back():
    async with running_relay(max_waiting_per_address=1) as relay:
        tid = new_tunnel_id()
        stream, status, headers = await raw_ws(relay.port, f"/cable/new/{tid}", source="127.0.0.2")
        async with stream:
            assert status == 101
            assert await _hold(relay.port, "127.0.0.2", []) == 429
            async with open_ws(connect_url(relay, headers["x-cable-routing-id"], tid)):
                held: list = []
                assert await _hold(relay.port, "127.0.0.2", held) == 101
                for other, _ in held:
                    await other.aclose()


async def test_near_the_limit_idle_tunnels_wait_only_the_pressure_timeout():
    config = {"max_tunnels": 10, "pressure_wait_timeout": 0.5, "wait_timeout": 60}
    async with running_relay(**config) as relay:
        held: list = []
        try:
            for n in range(9):  # 9 of 10: over the 80 % pressure line
                assert await _hold(relay.port, f"127.0.2.{n + 2}", held) == 101
            talker, _ = held[0]
            await talker.send_all(masked_frame(b"early"))  # this one sent something
            await trio.sleep(0.7)
            # A newcomer arrives: the idle ones older than 0.5 s are ended (1008), oldest first.
            assert await _hold(relay.port, "127.0.3.2", held) == 101
            codes = [await read_close_code(s, timeout=2) for s, _ in held[1:9]]
            assert codes == [1008] * 8, codes
            assert relay.tunnels.waiting() == 2  # the talker and the newcomer
            # The node has room again: honest tunnels get in.
            for n in range(5):
                assert await _hold(relay.port, f"127.0.4.{n + 2}", held) == 101
        finally:
            for stream, _ in held:
                await stream.aclose()


def test_default_max_tunnels_is_sized_from_memory():
    gib = 1 << 30
    assert default_max_tunnels(4096, memory=8 * gib) == int(8 * gib * 0.25) // (
        WAITING_TUNNEL_BYTES + 4096
    )
    assert default_max_tunnels(4096, memory=16 << 20) == MIN_DEFAULT_MAX_TUNNELS
    assert default_max_tunnels(4096, memory=1 << 50) == MAX_DEFAULT_MAX_TUNNELS
    assert RelayConfig().max_tunnels == default_max_tunnels(RelayConfig().max_pending_bytes)
    assert RelayConfig(max_tunnels=7).max_tunnels == 7
